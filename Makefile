# The two commands: `make train` (tiny decoder on this machine's CPU) and `make test`.
# Both create .venv and install pretrax into it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: train test test-fast install clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,tpu,gcs,hf,eval]"
	touch $(STAMP)

# Extra overrides: make train ARGS="train.steps=100 run.dir=runs/try"
# JAX_PLATFORMS=cpu: the tiny run is a CPU run, and the TPU compiler the test extra installs
# (for `pretrax compile`) would otherwise look for a TPU first and print warnings.
train: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/pretrax train configs/tiny.yaml $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# Every test not marked slow (pytest.ini): under 2 minutes on 2 cores, for the edit-test loop; `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache

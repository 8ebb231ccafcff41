"""Test set-up: the platform the tests run on, and the tiny run they share.

CPU by default, with 8 simulated devices, so sharding code runs on a real mesh; a
caller picks another with PRETRAX_TEST_PLATFORM=gpu (or cuda, tpu), e.g. to run the real
cuDNN kernel. Tests marked ``devices(n)`` skip, saying why, where fewer devices exist.
XLA_FLAGS and JAX_PLATFORMS must be set before jax is first imported, which is why it is here.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

FAST_COMPILE = ("" if os.environ.get("PRETRAX_TEST_XLA_OPT")
                else "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")


def cpu_xla_flags(devices: int) -> str:
    """XLA_FLAGS for a CPU test process with this many simulated devices (subprocesses that set their own)."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}".strip()


PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "tpu": "tpu"}  # PRETRAX_TEST_PLATFORM -> JAX_PLATFORMS
_chosen = os.environ.get("PRETRAX_TEST_PLATFORM", "cpu").strip().lower() or "cpu"
if _chosen in PLATFORMS:  # else pytest_configure stops the run
    # set, not defaulted: a JAX_PLATFORMS=cuda left in the shell must not move the CPU suite onto one GPU
    os.environ["JAX_PLATFORMS"] = PLATFORMS[_chosen]
if _chosen == "cpu":
    # xla_backend_optimization_level=0: LLVM's optimisation passes are most of a CPU compile, and the
    # suite's models are tiny, so they cost far more than they save (about half of each compile; the
    # losses come out bit-identical, docs/benchmarks.md). xla_cpu_use_fusion_emitters=false: XLA:CPU's
    # older fusion code generator, which compiles faster (the MoE, chunking and kv-cache tests: 146 s -> 103 s
    # with no compilation cache). PRETRAX_TEST_XLA_OPT=1 keeps XLA's defaults for both.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cpu_xla_flags(8)).strip()
elif _chosen in PLATFORMS:
    # several test processes share the accelerator: none may take 75% of its memory up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # float32 matmuls in float32 (GPUs default to TF32), so tolerances hold as on the CPU
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# One persistent JAX compilation cache per test session, shared by the xdist workers and the `pretrax`
# subprocesses they start: the suite's many tiny runs compile the same programs, and each now compiles once.
# Entries are keyed by the program, the compiler options and the jax version, so a hit is the same executable.
_session = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()  # the controller's pid
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"pretrax-tests-jax-{_session}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from gcs_fixture import gcs  # noqa: E402,F401  (sets the GCS emulator variables before gcsfs/tensorstore load)

# A model small enough that a test step compiles and runs in well under a second.
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=64",
    "data.seq_len=32",
    "train.batch_size=8",
    "train.steps=6",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.sample_tokens=0",
    "optim.warmup_steps=2",
    "checkpoint.every=3",
]


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist): the cache goes
        shutil.rmtree(os.path.join(tempfile.gettempdir(), f"pretrax-tests-jax-{_session}"), ignore_errors=True)


# The files that take longest (`pytest --durations`), handed out first: xdist's loadfile gives whole files to
# the workers in collection order, and a long file collected last runs alone while the other worker idles.
LONGEST_FIRST = ("test_sweep_worker.py", "test_gcs_runs.py", "test_moe.py", "test_reliability.py", "test_coordcheck.py",
                 "test_multiprocess.py", "test_hf_interop.py", "test_run_lock.py", "test_train.py",
                 "test_compile_search.py", "test_context_parallel.py", "test_first_run.py", "test_kv_cache.py",
                 "test_chunking.py", "test_finetune.py", "test_attention_backends.py", "test_nan_and_preemption.py",
                 "test_pod_logs.py", "test_sweep.py", "test_training_recipe.py", "test_model.py", "test_compile.py",
                 "test_encoder_decoder_training.py", "test_data_end_to_end.py", "test_run_record.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    if _chosen not in PLATFORMS:
        raise pytest.UsageError(f"PRETRAX_TEST_PLATFORM={_chosen!r} is not one of {', '.join(PLATFORMS)}")


def pytest_runtest_setup(item):
    """``@pytest.mark.devices(n)``: skip, naming the shortfall, where fewer than n devices exist."""
    marker = item.get_closest_marker("devices")
    if marker is None:
        return
    import jax

    need, have = marker.args[0], jax.devices()
    if len(have) < need:
        pytest.skip(f"needs {need} devices (the CPU default simulates 8); this host has {len(have)} "
                    f"{have[0].platform}")


def cli_in_process(*argv, capfd=None) -> subprocess.CompletedProcess:
    """`pretrax ARGV` run by cli.main in this process, answered as subprocess.run answers: exit code, stdout,
    stderr (warnings ignored, as PYTHONWARNINGS=ignore does for a child). It saves a process start, 2-3 s of
    imports; tests of what only a process shows (signals, kill -9, exit codes of the console script, imports)
    start one. capfd: pytest's fixture, so that output written to the file descriptors is seen too."""
    import contextlib
    import io
    import warnings

    from pretrax.cli import main

    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    if capfd is not None:
        capfd.readouterr()
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if capfd is None:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if capfd is not None:
        captured = capfd.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_run(capfd):
    """cli_run(*argv) -> CompletedProcess: `pretrax ARGV` in this process (cli_in_process), output captured."""
    return lambda *argv: cli_in_process(*argv, capfd=capfd)


@pytest.fixture
def tiny_cfg(tmp_path):
    """make(*overrides) -> a validated Config for a tiny run in a fresh directory."""
    from pretrax import config as config_lib

    def make(*overrides, run_dir=None):
        run_dir = run_dir or str(tmp_path / "run")
        return config_lib.load(None, TINY + [f"run.dir={run_dir}", *overrides])

    return make

"""Logs a pod user can read: with stderr not a terminal, process 0 prints one plain line per log step.

Real `pretrax train` processes with their output going to files, as under
nohup, `| tee` or tpu_scripts/logs.sh; two real JAX processes (gloo) for the
rule that only process 0 reports.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import TINY

from pretrax.train.metrics import ProgressLines, format_duration

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
LINE = re.compile(r"^step (\d+)/(\d+) \| loss \d+\.\d{4} \| [\d,]+ tokens/s \| elapsed \S+( \| ETA \S+)?$")


@pytest.mark.slow
def test_a_log_file_gets_a_line_every_log_every_steps_with_eval_and_checkpoints(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "pretrax.cli", "train", CONFIG, *TINY, "train.log_every=2",
                               "train.eval_every=4", f"run.dir={tmp_path / 'run'}"],
                              stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                              timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    steps = [(int(m.group(1)), m.group(3)) for m in map(LINE.match, text.splitlines()) if m]
    assert [s for s, _ in steps] == [2, 4, 6]  # every train.log_every steps, and the last one
    assert all(eta for s, eta in steps[1:-1]) and steps[-1][1] is None  # an ETA once there is a rate; none at the end
    assert "eval at step 4: loss" in text and "eval at step 6: loss" in text
    assert "checkpoint step 3: saving to" in text and "checkpoint step 6: saving to" in text
    assert "\r" not in text and "it/s" not in text  # no progress bar in a file


@pytest.mark.slow
def test_only_process_0_reports(tmp_path):
    from test_multiprocess import WORKER, free_port, worker_env

    overrides = TINY + ["train.steps=4", "mesh.data=2", "mesh.fsdp=4", f"run.dir={tmp_path / 'run'}"]
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(overrides), "4"], env=worker_env(i, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert [int(m.group(1)) for m in map(LINE.match, outs[0].splitlines()) if m] == [1, 2, 3, 4]
    assert "run dir:" in outs[0] and "checkpoint step 3" in outs[0]
    assert not any(LINE.match(line) for line in outs[1].splitlines())
    assert "run dir:" not in outs[1] and "checkpoint step" not in outs[1]


def test_eta_comes_from_the_rate_since_the_first_logged_step():
    lines = ProgressLines(total_steps=100, start_step=40)  # a resumed run: 60 steps to go
    now = time.monotonic()
    lines.first, lines.started = (50, now - 10.0), now - 12.0  # 10 steps took 10 s since the first line
    text = lines.line({"step": 60, "loss": 1.0, "tokens_per_s": 1000.0, "mfu": 0.421})
    assert text.startswith("step 60/100 | loss 1.0000 | 1,000 tokens/s | MFU 42.1% | elapsed 12s | ETA ")
    assert text.endswith("ETA 40s")  # 40 steps left at 1 s each
    assert [format_duration(s) for s in (5, 65, 3 * 3600 + 5 * 60 + 9)] == ["5s", "1m05s", "3h05m"]

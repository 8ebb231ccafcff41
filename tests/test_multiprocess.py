"""Real multi-process JAX (2 processes x 4 CPU devices, gloo): same losses as 1 x 8, exact resume on 1 host."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import TINY, cpu_xla_flags
from pretrax import config as config_lib
from pretrax.train.loop import train

pytestmark = pytest.mark.multiprocess

WORKER = textwrap.dedent(
    """
    import json, sys
    from pretrax.parallel.distributed import initialize_from_env
    assert initialize_from_env()
    import jax
    from pretrax import config as config_lib
    from pretrax.train.loop import train
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    cfg = config_lib.load(None, json.loads(sys.argv[1]))
    result = train(cfg, stop_at=int(sys.argv[2]), progress=False)
    print("LOSSES " + json.dumps(result.losses), flush=True)
    print("FINAL " + json.dumps([result.preempted, result.final_step]), flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(i: int, port: int, **extra: str) -> dict:
    """Process i of 2 (4 CPU devices each), coordinated on 127.0.0.1:port."""
    return {**os.environ, "XLA_FLAGS": cpu_xla_flags(4), "JAX_PLATFORMS": "cpu",
            "PRETRAX_COORDINATOR": f"127.0.0.1:{port}", "PRETRAX_NUM_PROCESSES": "2", "PRETRAX_PROCESS_ID": str(i),
            "PRETRAX_INIT_TIMEOUT": "60", **extra}


def open_ended(run_dir) -> list[str]:
    """A 2-process run that trains until stopped (no checkpoint before then)."""
    return TINY + ["train.steps=100000", "checkpoint.every=100000", "mesh.data=2", "mesh.fsdp=4", f"run.dir={run_dir}"]


@contextlib.contextmanager
def two_workers_training(tmp_path, rows: int, **extra_env: str):
    """Two processes training open_ended(tmp_path / "run"), logging to tmp_path/process{i}.log (files: a
    full pipe would block a process); yields them once metrics.jsonl has `rows` rows, kills what is left after."""
    overrides = open_ended(tmp_path / "run")
    port = free_port()
    logs = [open(tmp_path / f"process{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(overrides), "100000"],
                              env=worker_env(i, port, **extra_env), stdout=logs[i], stderr=subprocess.STDOUT)
             for i in range(2)]
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.exists() and metrics.read_text().count("\n") >= rows):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training never started"
            time.sleep(0.2)
        yield procs
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()


def run_two_processes(overrides, stop_at, timeout=240):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(overrides), str(stop_at)],
                              env=worker_env(i, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    losses = [json.loads(line.split(" ", 1)[1]) for out in outs for line in out.splitlines() if line.startswith("LOSSES")]
    return [{int(k): v for k, v in ls.items()} for ls in losses]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_one(tmp_path):
    # a save at 4 (where the two processes stop) and 6, not also at 2: a save costs more CPU than the
    # steps between; the reference run saves only its last (saving changes no loss)
    common = TINY + ["train.steps=6", "checkpoint.every=4", "mesh.data=2", "mesh.fsdp=4"]
    single = train(config_lib.load(None, common + [f"run.dir={tmp_path / 'single'}", "checkpoint.every=1000"]),
                   progress=False).losses

    multi_dir = tmp_path / "multi"
    losses = run_two_processes(common + [f"run.dir={multi_dir}"], stop_at=4)
    assert losses[0] == losses[1]  # every process sees the same global loss
    for step in range(1, 5):
        assert losses[0][step] == pytest.approx(single[step], rel=2e-5)

    # the 2-process checkpoint (step 4) resumes in this single 8-device process, continuing exactly
    resumed = train(config_lib.load(None, common + [f"run.dir={multi_dir}"]), progress=False)
    assert resumed.start_step == 4
    for step in (5, 6):
        assert resumed.losses[step] == pytest.approx(single[step], rel=2e-5)
    rows = [json.loads(line) for line in open(multi_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))  # process 0 alone wrote metrics, once per step


@pytest.mark.slow
def test_peer_death_makes_the_survivor_exit_with_an_error(tmp_path):
    """SIGKILL one of two training processes: the other exits non-zero within the heartbeat bound, not hangs."""
    with two_workers_training(tmp_path, rows=1, PRETRAX_HEARTBEAT_TIMEOUT="10") as procs:
        procs[1].kill()  # SIGKILL: no handler, no goodbye, like a lost host
        killed = time.monotonic()
        procs[0].wait(timeout=90)  # raises TimeoutExpired if the survivor hangs
        assert time.monotonic() - killed < 60
        assert procs[0].returncode != 0, (tmp_path / "process0.log").read_text()[-2000:]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_and_saves(tmp_path):
    """A pod worker gets SIGTERM (maintenance, preemption): every process stops after the same step, the
    collective save completes, and a restart resumes from that step."""
    from pretrax.train import checkpoint as ckpt
    from pretrax.train.checkpoint_verify import list_steps

    run_dir = tmp_path / "run"
    with two_workers_training(tmp_path, rows=3) as procs:  # a few steps in
        procs[1].send_signal(signal.SIGTERM)  # only the second worker hears it
        for p in procs:
            p.wait(timeout=120)
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    outs = [path.read_text() for path in logs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    finals = [json.loads(line.split(" ", 1)[1]) for out in outs for line in out.splitlines() if line.startswith("FINAL")]
    assert len(finals) == 2 and finals[0] == finals[1] and finals[0][0] is True, finals  # both preempted, same step
    stopped = finals[0][1]
    assert 3 <= stopped < 100000
    assert [(r.step, r.complete, r.verifies) for r in list_steps(ckpt.checkpoint_dir(str(run_dir)))] == \
        [(stopped, True, True)]
    resumed = train(config_lib.load(None, open_ended(run_dir)), stop_at=stopped + 1, progress=False)
    assert resumed.start_step == stopped and resumed.final_step == stopped + 1


@pytest.mark.slow
def test_unreachable_coordinator_is_a_one_line_error_after_the_timeout(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PRETRAX_COORDINATOR": f"127.0.0.1:{free_port()}",
           "PRETRAX_NUM_PROCESSES": "2", "PRETRAX_PROCESS_ID": "1", "PRETRAX_INIT_TIMEOUT": "2"}
    start = time.monotonic()
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
    result = subprocess.run([sys.executable, "-m", "pretrax.cli", "train", config,
                             f"run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "could not reach the coordinator 127.0.0.1:" in result.stderr and "PRETRAX_INIT_TIMEOUT" in result.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run").exists()  # nothing written

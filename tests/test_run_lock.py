"""One trainer per run dir: a second `pretrax train` is refused naming the holder, a dead holder's lock is not.

Real `pretrax train` processes on a local run dir (flock) and on gs:// against
the fake-gcs-server (a lease with a heartbeat), killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import TINY
from gcs_fixture import child_env

from pretrax import config as config_lib
from pretrax import storage
from pretrax.train import checkpoint as ckpt
from pretrax.train import run_lock
from pretrax.train.checkpoint_verify import list_steps
from pretrax.train.loop import train
from pretrax.train.metrics import logged_rows

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
# still running when the second trainer starts; a save every 6 steps, not 2: the holder trains all the
# while the refused trainers start (seconds), and each save costs more CPU than its steps
LONG = ["train.steps=2000", "checkpoint.every=6"]


def load(run_dir, *overrides):
    return config_lib.load(CONFIG, [*TINY, *LONG, f"run.dir={run_dir}", *overrides])


def pretrax_train(run_dir, *overrides, **env):
    return subprocess.Popen([sys.executable, "-m", "pretrax.cli", "train", CONFIG, *TINY, *LONG, f"run.dir={run_dir}",
                             *overrides], env=child_env(PYTHONWARNINGS="ignore", **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def complete_steps(run_dir):
    return [r.step for r in list_steps(ckpt.checkpoint_dir(run_dir), verify=False) if r.complete]


def metrics_steps(run_dir):
    return [row["step"] for _, row in logged_rows(storage.join(run_dir, "metrics.jsonl")) if row is not None]


def wait_for_checkpoint(proc, run_dir, timeout=300):
    deadline = time.monotonic() + timeout
    while not complete_steps(run_dir):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def snapshot(run_dir):
    """Every file under a local run dir with its bytes."""
    found = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, run_dir)] = f.read()
    return found


def kill_9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def refused(proc, holder_pid):
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # it is training: the lock did not refuse it
        proc.kill()
        proc.wait()
        pytest.fail("the second trainer was not refused")
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("pretrax: error: run dir ") and "is in use by pretrax train" in lines[0]
    assert f"pid {holder_pid}," in lines[0] and f"host {socket.gethostname()}" in lines[0], lines[0]
    return lines[0]


def test_a_local_lock_refuses_a_second_holder_and_is_free_once_released(tmp_path):
    run_dir = str(tmp_path / "run")
    first = run_lock.acquire(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(run_lock.RunDirInUse, match=f"pid {os.getpid()}, since 20"):
        run_lock.acquire(run_dir)
    assert snapshot(run_dir) == before
    assert json.loads(before[".lock"])["pid"] == os.getpid()
    first.release()
    assert not os.path.exists(run_dir)  # no trace left once released: not even the folder it made
    second = run_lock.acquire(run_dir)
    assert json.loads(snapshot(run_dir)[".lock"])["pid"] == os.getpid()
    second.release()


@pytest.mark.gcs
@pytest.mark.slow
def test_a_gcs_lease_is_kept_alive_by_its_heartbeat_and_taken_over_once_stale(gcs, monkeypatch):
    run_dir = gcs.make_bucket() + "/run"
    monkeypatch.setenv("PRETRAX_LOCK_STALE_S", "1")
    lease = run_lock.acquire(run_dir)
    time.sleep(2.5)  # past the stale timeout: only the heartbeat keeps it
    before = gcs.objects(run_dir)
    with pytest.raises(run_lock.RunDirInUse, match=f"pid {os.getpid()}, since 20"):
        run_lock.acquire(run_dir)
    assert gcs.objects(run_dir) == before == ["run/lock/1"]
    lease.heartbeat.__exit__(None, None, None)  # a holder that stopped beating (stalled, or its VM gone)
    lease.heartbeat = None
    time.sleep(1.5)
    second = run_lock.acquire(run_dir)  # taken over: attempt 2
    assert second.claim.attempt == 2 and second.claim.lost() is False and lease.claim.lost() is True
    second.release()
    run_lock.acquire(run_dir).release()  # a released lease is free at once, whatever the timeout


@pytest.mark.gcs
def test_a_gcs_lease_held_on_another_host_waits_for_the_timeout(gcs, monkeypatch):
    run_dir = gcs.make_bucket() + "/run"
    now = time.time()
    storage.write_text(run_dir + "/lock/1", json.dumps({"host": "other-vm", "pid": 1, "since": "2026-01-01T00:00:00",
                                                        "command": "pretrax train x.yaml", "heartbeat_at": now}))
    monkeypatch.setenv("PRETRAX_LOCK_STALE_S", "2")
    with pytest.raises(run_lock.RunDirInUse, match="on host other-vm, pid 1, since 2026-01-01"):
        run_lock.acquire(run_dir)
    time.sleep(2.2)
    run_lock.acquire(run_dir).release()


@pytest.mark.slow
def test_a_second_local_trainer_is_refused_and_a_killed_holder_resumes_at_once(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = pretrax_train(run_dir)
    try:
        wait_for_checkpoint(holder, run_dir)
        holder.send_signal(signal.SIGSTOP)  # the holder keeps its lock, and the run dir holds still
        before = snapshot(run_dir)
        same, other = pretrax_train(run_dir), pretrax_train(run_dir, "optim.lr=0.01", "checkpoint.every=3")
        refused(same, holder.pid)
        refused(other, holder.pid)
        assert snapshot(run_dir) == before  # byte for byte
        holder.send_signal(signal.SIGCONT)
        kill_9(holder)
    finally:
        if holder.poll() is None:
            holder.kill()
    newest = max(complete_steps(run_dir))
    resumed = train(load(run_dir), stop_at=newest + 2, progress=False)  # at once: the OS let the flock go
    assert resumed.start_step == newest
    assert metrics_steps(run_dir) == list(range(1, newest + 3))  # each step once


@pytest.mark.slow
@pytest.mark.gcs
def test_on_gcs_a_second_trainer_is_refused_a_killed_holder_on_this_host_resumes_and_a_stale_lease_is_taken(
        gcs, monkeypatch):
    run_dir = gcs.make_bucket() + "/run"
    holder = pretrax_train(run_dir)  # the default 120 s timeout: only "this host, pid gone" frees it quickly
    try:
        wait_for_checkpoint(holder, run_dir)
        refused(pretrax_train(run_dir, "optim.lr=0.01"), holder.pid)
        kill_9(holder)
    finally:
        if holder.poll() is None:
            holder.kill()
    newest = max(complete_steps(run_dir))
    start = time.monotonic()
    resumed = train(load(run_dir), stop_at=newest + 1, progress=False)
    assert resumed.start_step == newest and time.monotonic() - start < 100
    assert metrics_steps(run_dir) == list(range(1, newest + 2))

    # a holder on another machine that stopped beating: refused until PRETRAX_LOCK_STALE_S, then taken over
    storage.write_text(run_dir + "/lock/9", json.dumps({"host": "other-vm", "pid": 1, "since": "2026-01-01T00:00:00",
                                                        "heartbeat_at": time.time()}))
    monkeypatch.setenv("PRETRAX_LOCK_STALE_S", "3")
    with pytest.raises(run_lock.RunDirInUse, match="on host other-vm, pid 1"):
        train(load(run_dir), stop_at=newest + 2, progress=False)
    time.sleep(3.2)
    resumed = train(load(run_dir), stop_at=newest + 2, progress=False)
    assert resumed.start_step == newest + 1
    assert metrics_steps(run_dir) == list(range(1, newest + 3))
    assert "run/lock/10" in gcs.objects(run_dir)

"""Nothing lost: kill -9 mid-training and mid-save, damaged checkpoints, a failing disk, keep=1.

Real `pretrax train` processes killed with SIGKILL, real files cut short or
deleted, a real OS write limit; each test then resumes and compares the
losses with an uninterrupted run's. docs/reliability.md lists the promises.
"""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import TINY, cli_in_process
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from pretrax import config as config_lib
from pretrax.errors import CheckpointError
from pretrax.generate import load_run
from pretrax.train import checkpoint as ckpt
from pretrax.train.checkpoint_verify import list_steps
from pretrax.train.loop import train

CONFIG = "configs/tiny.yaml"
# room to land a kill between checkpoints, far from the end; with GPT-1's dropout, so the kill -9 resume
# also proves the dropout masks follow the run seed and the step (the same losses as a run never killed)
LONG = ["train.steps=40", "checkpoint.every=5", "model.dropout=0.1"]
# every run here uses LONG, so they all share the programs compiled once


def load(run_dir, *overrides):
    return config_lib.load(CONFIG, [*TINY, f"run.dir={run_dir}", *overrides])


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One JAX compilation cache for this module's runs, in process and in subprocesses: each program
    compiles once instead of once per run (about 3x faster on 2 cores); restored afterwards."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax_cache.set_cache_dir(path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # Orbax's many small slicing programs too
    jax_cache.reset_cache()
    env = {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    os.environ.update(env)  # for the `pretrax` subprocesses
    yield path
    for key in env:
        del os.environ[key]
    jax_cache.set_cache_dir(before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    jax_cache.reset_cache()


def cli(*args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return [sys.executable, "-m", "pretrax.cli", *args], dict(env=env, **kwargs)


def start_training(run_dir, *overrides):
    argv, kwargs = cli("train", CONFIG, *TINY, f"run.dir={run_dir}", *overrides)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def logged_losses(run_dir, name="metrics.jsonl") -> dict[int, float]:
    """{step: loss} from metrics.jsonl (a line still being written is ignored)."""
    path = os.path.join(run_dir, name)
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows[row["step"]] = row["loss"]
    return rows


def kill_when(procs_and_conditions, timeout=600):
    """SIGKILL each process the moment its condition holds (polled every millisecond); True if it was killed."""
    pending = dict(enumerate(procs_and_conditions))
    killed = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for i, (proc, ready) in list(pending.items()):
            if proc.poll() is not None:
                killed[i] = False
                del pending[i]
            elif ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed[i] = proc.returncode == -signal.SIGKILL
                del pending[i]
        time.sleep(0.001)
    for i, (proc, _) in pending.items():
        proc.kill()
        killed[i] = False
    return [killed[i] for i in range(len(procs_and_conditions))]


def complete_steps(run_dir):
    return [r.step for r in list_steps(ckpt.checkpoint_dir(run_dir), verify=False) if r.complete]


def snapshot(root):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished LONG run (checkpoints kept at steps 30, 35, 40) and its losses: the uninterrupted reference."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return str(run_dir), train(load(run_dir, *LONG), progress=False).losses


@pytest.mark.slow
def test_kill_9_during_training_resumes_as_if_never_killed(reference, tmp_path):
    reference = reference[1]
    seeds = (0, 1)  # two kills at two random steps (a third added 20 s of CPU to a suite at its time budget)
    # a random step per seed, past step 10: the save at 10 waited for the one at 5, so one is complete
    kill_after = {seed: random.Random(seed).randint(11, 25) for seed in seeds}
    runs = {seed: str(tmp_path / f"seed{seed}") for seed in seeds}
    procs = {seed: start_training(runs[seed], *LONG) for seed in seeds}  # side by side: the start-up overlaps
    killed = kill_when([(procs[s], lambda s=s: max(logged_losses(runs[s]), default=0) >= kill_after[s])
                        for s in seeds])
    assert all(killed), f"a run ended before its kill: {killed}"
    for seed in seeds:
        before = logged_losses(runs[seed])
        newest = max(complete_steps(runs[seed]), default=0)
        assert kill_after[seed] <= max(before) < 40 and 5 <= newest <= max(before), (seed, max(before), newest)
        resumed = train(load(runs[seed], *LONG), progress=False)
        assert resumed.start_step == newest
        assert {s: resumed.losses[s] for s in range(newest + 1, 41)} == {s: reference[s] for s in range(newest + 1, 41)}
        assert before == {s: reference[s] for s in before}  # what the killed process logged was right too
        # the killed run's rows past its checkpoint moved aside: metrics.jsonl holds each step once
        steps = [json.loads(line)["step"] for line in open(os.path.join(runs[seed], "metrics.jsonl"))]
        assert steps == sorted(set(steps)) and steps[-1] == 40, steps
        side = logged_losses(runs[seed], "metrics.superseded.jsonl")  # complete rows; a torn last line is there too
        assert side and min(side) > newest and max(side) == max(before), (side, newest)


def kill_inside_a_save(proc, checkpoint_dir, first_step):
    """SIGKILL proc while a save (of first_step or later) has array data on disk under Orbax's temporary name.

    The process is stopped (SIGSTOP) the moment such data is seen, so the check and the kill see the same
    disk; if that save was renamed complete just before the stop, the process goes on to the next save.
    Returns the step whose save was cut short, or None if the run ended first.
    """
    passed = set()
    while proc.poll() is None:
        for path in glob.glob(os.path.join(checkpoint_dir, "*.orbax-checkpoint-tmp*", "state*", "ocdbt.process_*", "d", "*")):
            tmp = os.path.relpath(path, checkpoint_dir).split(os.sep)[0]
            step = int(tmp.split(".")[0])
            if step < first_step or step in passed:
                continue
            proc.send_signal(signal.SIGSTOP)
            if os.path.isdir(os.path.join(checkpoint_dir, tmp)) and not os.path.exists(os.path.join(checkpoint_dir, str(step))):
                proc.kill()
                proc.wait()
                return step
            passed.add(step)
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    return None


@pytest.mark.slow
def test_kill_9_during_an_async_checkpoint_write_resumes_from_the_previous_one(reference, tmp_path):
    run = str(tmp_path / "run")
    cdir = ckpt.checkpoint_dir(run)
    proc = start_training(run, *LONG, "checkpoint.keep=1")
    cut = kill_inside_a_save(proc, cdir, first_step=10)
    assert cut is not None, "the run ended before a save could be cut short"
    reports = list_steps(cdir)
    assert [(r.step, r.complete) for r in reports] == [(cut - 5, True), (cut, False)], reports  # landed inside
    assert reports[0].verifies  # keep=1: the old checkpoint stays until the new one is whole
    resumed = train(load(run, *LONG, "checkpoint.keep=1"), progress=False)
    assert resumed.start_step == cut - 5
    assert [resumed.losses[s] for s in range(cut - 4, 41)] == [reference[1][s] for s in range(cut - 4, 41)]
    assert [(r.step, r.verifies) for r in list_steps(cdir)] == [(40, True)]  # the half-written one was cleared


def _damage(step_dir, how):
    data_files = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(step_dir, "state"))
                  if os.path.basename(d) == "d" for f in files]
    assert data_files
    for path in data_files:
        if how == "truncate":
            os.truncate(path, os.path.getsize(path) // 10)
        else:
            os.remove(path)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_checkpoint_is_reported_listed_and_skipped(reference, tmp_path, capfd, how):
    base, losses = reference
    run = str(tmp_path / "run")
    shutil.copytree(base, run)
    newest = os.path.join(ckpt.checkpoint_dir(run), "40")
    _damage(newest, how)
    damaged = snapshot(newest)

    listed = cli_in_process("checkpoints", run, "--json", capfd=capfd)
    assert listed.returncode == 1, listed.stderr  # 1: a complete checkpoint does not verify
    rows = {r["step"]: r for r in json.loads(listed.stdout)}
    assert rows[30]["verifies"] and rows[35]["verifies"] and rows[35]["bytes"] > 0
    assert rows[40]["complete"] and not rows[40]["verifies"] and "state array" in rows[40]["problem"]

    # sampling reads past the damaged checkpoint, says so in one line, and writes nothing
    untouched = snapshot(run)
    capfd.readouterr()
    assert load_run(run)[4] == 35
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("pretrax:")]
    assert err == [f"pretrax: checkpoint at step 40 is damaged ({rows[40]['problem']}); using step 35, "
                   "the newest that restores"], err
    assert snapshot(run) == untouched

    resumed = train(load(run, *LONG), progress=False)
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("pretrax:")]
    assert len(err) == 1 and "checkpoint at step 40 is damaged" in err[0] and "resuming from step 35" in err[0], err
    assert resumed.start_step == 35
    assert [resumed.losses[s] for s in range(36, 41)] == [losses[s] for s in range(36, 41)]
    # the damaged one is kept, set aside, byte for byte; the new step 40 verifies
    kept = os.path.join(ckpt.damaged_dir(run), "40")
    assert {p.replace(kept, "K"): b for p, b in snapshot(kept).items()} == \
           {p.replace(newest, "K"): b for p, b in damaged.items()}
    assert [(r.step, r.verifies) for r in list_steps(ckpt.checkpoint_dir(run))] == [(30, True), (35, True), (40, True)]


@pytest.mark.slow
def test_no_good_checkpoint_left_is_one_line_exit_2_and_nothing_touched(reference, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(reference[0], run)
    for step in complete_steps(run):
        _damage(os.path.join(ckpt.checkpoint_dir(run), str(step)), "truncate")
    before = snapshot(run)
    argv, kwargs = cli("train", CONFIG, *TINY, f"run.dir={run}", *LONG)
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pretrax:")]
    assert len(errors) == 1 and errors[0].startswith("pretrax: error: no checkpoint in "), proc.stderr[-3000:]
    assert all(f"step {s} is damaged" in errors[0] for s in (30, 35, 40)), errors[0]
    assert f"`pretrax checkpoints {run}` lists them" in errors[0]  # the run's own dir: a command to paste
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert snapshot(run) == before


# `pretrax ...` in a process whose writes past 64 KiB fail with EFBIG (RLIMIT_FSIZE): a real OS write error,
# partway through a checkpoint's array files, that reaches Orbax as a full disk's ENOSPC would
SMALL_FILES_ONLY = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
    "sys.argv = ['pretrax', *sys.argv[1:]]; runpy.run_module('pretrax.cli', run_name='__main__')"
)


@pytest.mark.slow
@pytest.mark.parametrize("async_save", ["true", "false"])
def test_failing_disk_stops_with_one_line_and_keep_1_keeps_the_only_checkpoint(reference, tmp_path, async_save):
    losses = reference[1]
    run = str(tmp_path / "run")
    overrides = [*LONG, "checkpoint.keep=1", f"checkpoint.async_save={async_save}"]
    shutil.copytree(reference[0], run)  # as if stopped at step 35 with keep=1: its only checkpoint is 35
    for step in (30, 40):
        shutil.rmtree(os.path.join(ckpt.checkpoint_dir(run), str(step)))
    step_35 = snapshot(os.path.join(ckpt.checkpoint_dir(run), "35"))

    argv, kwargs = cli("train", CONFIG, *TINY, f"run.dir={run}", *overrides)
    argv = [sys.executable, "-c", SMALL_FILES_ONLY, *argv[3:]]  # the same command, under the write limit
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pretrax:")]
    assert errors == [line for line in proc.stderr.splitlines() if line.strip()], proc.stderr[-3000:]  # only that line
    assert len(errors) == 1 and f"could not write checkpoint step 40 in {ckpt.checkpoint_dir(run)}: File too large" \
        in errors[0] and "newest complete checkpoint (step 35) is untouched" in errors[0], errors
    assert complete_steps(run) == [35]  # nothing that looks complete was left, and keep=1 deleted nothing
    assert snapshot(os.path.join(ckpt.checkpoint_dir(run), "35")) == step_35

    resumed = train(load(run, *overrides), progress=False)  # once the disk has room, the run goes on from step 35
    assert resumed.start_step == 35
    assert [resumed.losses[s] for s in range(36, 41)] == [losses[s] for s in range(36, 41)]
    assert [(r.step, r.verifies) for r in list_steps(ckpt.checkpoint_dir(run))] == [(40, True)]


@pytest.mark.slow
def test_checkpoint_dir_that_cannot_be_made_fails_before_the_first_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the checkpoint directory should be")
    with pytest.raises(CheckpointError, match=r"checkpoint dir .*checkpoints is a file"):
        train(load(run, *LONG), progress=False)
    assert not (run / "metrics.jsonl").exists()  # stopped before training, not at the first save


@pytest.mark.parametrize("text", [
    "UNKNOWN: Error writing local file \"/r/checkpoints/40/d/x\": File too large [os_error_code='27']",
    # the layout that once named the cause "true}'] (errno 27)": a spec payload between the message and the tag
    "UNKNOWN: Error writing local file \"/r/checkpoints/40/d/x\" [tensorstore_spec='{\"driver\":\"file\","
    "\"recheck_cached_data\":true}'] [os_error_code='27']",
])
def test_a_tensorstore_os_error_is_named_by_its_errno(text):
    assert ckpt._reason(ValueError(text)) == "File too large (errno 27)"

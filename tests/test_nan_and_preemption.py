"""Non-finite losses (train.nan_policy stop | skip | rollback, a NaN injected into a real batch)
and preemption (a real SIGTERM to a real `pretrax train` process: save, exit 143, resume exactly)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY
from pretrax.data.pipeline import make_train_iterator
from pretrax.errors import TrainingError
from pretrax.parallel.mesh import make_mesh
from pretrax.train import checkpoint as ckpt
from pretrax.train.loop import train
from pretrax.train.state import init_state, make_setup
from pretrax.train.step import make_train_step, to_global


def nan_at(*draws):
    """A batch hook that poisons one loss weight of the n-th batches drawn (1-based) with NaN.

    Counted in draws, not steps: after a rollback the same step number reads a new batch."""
    count = [0]

    def hook(step, batch):
        count[0] += 1
        if count[0] in draws:
            batch = dict(batch)
            batch["loss_mask"] = batch["loss_mask"].copy()
            batch["loss_mask"][0, 0] = np.nan
        return batch
    return hook


@pytest.mark.slow
def test_the_step_never_applies_a_non_finite_update(tiny_cfg):
    cfg = tiny_cfg()
    setup = make_setup(cfg, make_mesh(cfg.mesh), 384)
    step = make_train_step(setup)
    it = make_train_iterator(cfg)
    good, bad = next(it), nan_at(1)(1, next(it))
    it.close()
    state = init_state(setup, 0)
    before = jax.device_get(state)
    after, metrics = step(state, to_global(setup, bad))
    after = jax.device_get(after)
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    same = jax.tree.map(lambda a, b: np.array_equal(a, b), before["params"], after["params"])
    assert all(jax.tree.leaves(same))  # weights untouched
    same = jax.tree.map(lambda a, b: np.array_equal(a, b), before["opt_state"], after["opt_state"])
    assert all(jax.tree.leaves(same))  # Adam moments and count untouched
    _, metrics = step(jax.device_put(after, setup.state_shardings), to_global(setup, good))
    assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_nan_policy_stop_names_the_step_and_saves_nothing_after_it(tiny_cfg):
    cfg = tiny_cfg("train.nan_policy=stop", "train.log_every=2")
    with pytest.raises(TrainingError, match=r"step 4 \(train.nan_policy=stop\).*newest checkpoint is step 3"):
        train(cfg, batch_hook=nan_at(4), progress=False)
    assert ckpt.latest_step(cfg.run.dir) == 3


@pytest.mark.slow
def test_nan_policy_skip_drops_the_update_counts_it_and_goes_on(tiny_cfg):
    cfg = tiny_cfg("train.nan_policy=skip")
    result = train(cfg, batch_hook=nan_at(4), progress=False)
    assert result.skipped_steps == (4,) and result.final_step == 6
    assert all(np.isfinite(result.losses[s]) for s in (1, 2, 3, 5, 6)) and np.isnan(result.losses[4])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(result.params)))
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl"))]
    assert [r.get("skipped_steps", 0) for r in rows] == [0, 0, 0, 1, 1, 1]


@pytest.mark.slow
def test_a_skipped_step_seen_at_a_checkpoint_and_again_at_the_next_row_counts_once(tiny_cfg):
    # rows every 2 steps, a checkpoint at 3: step 3's window is looked at by the checkpoint and by row 4
    cfg = tiny_cfg("train.nan_policy=skip", "train.log_every=2", "checkpoint.every=3")
    result = train(cfg, batch_hook=nan_at(3), progress=False)
    assert result.skipped_steps == (3,) and result.final_step == 6
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl"))]
    assert [(r["step"], r.get("skipped_steps", 0)) for r in rows] == [(2, 0), (4, 1), (6, 1)]


@pytest.mark.slow
def test_nan_policy_rollback_reloads_the_checkpoint_and_skips_the_batches(tiny_cfg, tmp_path):
    drawn = {}  # the stream's first 8 batches (they depend on the seed, not on train.steps)

    def record(step, batch):
        drawn[step] = batch
        return batch

    train(tiny_cfg("train.steps=8", "checkpoint.every=100", run_dir=str(tmp_path / "ref")), batch_hook=record,
          progress=False)
    common = ["train.steps=6", "checkpoint.every=3"]
    # NaN in the 5th batch: back to the step-3 checkpoint; steps 4..6 then read batches 6, 7, 8
    rolled = train(tiny_cfg(*common, "train.nan_policy=rollback", run_dir=str(tmp_path / "rb")),
                   batch_hook=nan_at(5), progress=False)
    assert rolled.rollbacks == 1 and rolled.final_step == 6
    # what it must equal: the same step-3 checkpoint, then batches 6, 7, 8
    train(tiny_cfg(*common, run_dir=str(tmp_path / "c")), stop_at=3, progress=False)
    check = train(tiny_cfg(*common, run_dir=str(tmp_path / "c")), batch_hook=lambda s, b: drawn[s + 2],
                  progress=False)
    for s in (4, 5, 6):
        assert rolled.losses[s] == pytest.approx(check.losses[s], rel=1e-6)


@pytest.mark.slow
def test_nan_policy_rollback_without_a_checkpoint_stops(tiny_cfg):
    with pytest.raises(TrainingError, match="nothing to roll back to"):
        train(tiny_cfg("train.nan_policy=rollback"), batch_hook=nan_at(1), progress=False)


def sigterm_after_rows(proc, metrics, rows: int, wait: float) -> str:
    """SIGTERM a training process once its metrics.jsonl has `rows` rows (or after `wait` s); its stderr."""
    deadline = time.time() + wait
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_143_and_resumes_exactly(tiny_cfg, tmp_path):
    run_dir = tmp_path / "run"
    common = ["train.steps=300", "checkpoint.every=1000", "train.eval_every=0"]
    proc = subprocess.Popen([sys.executable, "-m", "pretrax.cli", "train", "configs/tiny.yaml", *TINY, *common,
                             f"run.dir={run_dir}", "--no-sample"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = sigterm_after_rows(proc, run_dir / "metrics.jsonl", rows=3, wait=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = ckpt.latest_step(str(run_dir))
    assert stopped is not None and f"preempted at step {stopped}" in err and "Traceback" not in err
    assert stopped < 300
    resumed = train(tiny_cfg(*common, run_dir=str(run_dir)), stop_at=stopped + 3, progress=False)
    straight = train(tiny_cfg(*common, run_dir=str(tmp_path / "straight")), stop_at=stopped + 3, progress=False)
    assert resumed.start_step == stopped
    for s in range(stopped + 1, stopped + 4):
        assert resumed.losses[s] == pytest.approx(straight.losses[s], rel=1e-6)

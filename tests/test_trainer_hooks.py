"""The step loop and its hooks (trainer.py, hooks.py): which hooks run at which step, in what order,
what their results do (metrics into the step's row, notes, stop, rollback), and a hook added to a real
run whose scores land in metrics.jsonl."""

import json
import os

import jax
import pytest

from pretrax.train.hooks import HookResult, Rollback
from pretrax.train.loop import TrainResult, train
from pretrax.train.trainer import Trainer


class Recorder:
    """A hook due every `every` steps (0: never by itself) that records what it saw and returns `result(ctx)`."""

    def __init__(self, name, every, log, result=None, due_with=()):
        self.name, self.every, self.log, self.due_with = name, every, log, tuple(due_with)
        self.result = result or (lambda ctx: HookResult())

    def due(self, step):
        return self.every > 0 and step % self.every == 0

    def run(self, ctx):
        self.log.append((self.name, ctx.step, ctx.state, dict(ctx.row), [s for s, _ in ctx.window.steps]))
        return self.result(ctx)


def counting_step(state, batch):
    """A train step on plain numbers: the state counts steps, the loss is the batch."""
    return state + 1, {"loss": float(batch), "nonfinite": 0.0}


def run(hooks, end, start=0, state=0):
    lines = []
    trainer = Trainer(counting_step, lambda step: step * 10, hooks, say=lines.append)
    state, step = trainer.run(state, start, end)
    return trainer, state, step, lines


def test_hooks_run_when_due_in_list_order_and_see_the_metrics_since_the_last_row():
    log = []
    scores = Recorder("scores", 4, log, lambda ctx: HookResult(metrics={"score": ctx.step}, note=f"scored {ctx.step}"))
    row = Recorder("row", 3, log, lambda ctx: HookResult(logged=True), due_with=(scores,))
    save = Recorder("save", 5, log, lambda ctx: HookResult(note=f"saved {ctx.step}"))
    trainer, state, step, lines = run([scores, row, save], end=10)
    assert (state, step, trainer.stopped) == (10, 10, False)
    assert [(name, s) for name, s, *_ in log] == [("row", 3), ("scores", 4), ("row", 4), ("save", 5), ("row", 6),
                                                  ("scores", 8), ("row", 8), ("row", 9), ("save", 10)]
    seen = {(name, s): (row, steps) for name, s, _, row, steps in log}
    assert seen["row", 4] == ({"score": 4}, [4])  # the earlier hook's metrics are in the step's row
    assert seen["row", 3] == ({}, [1, 2, 3])  # the window: every step since the last row
    assert seen["save", 5] == ({}, [5]) and seen["row", 6] == ({}, [5, 6])  # a save does not end the window
    assert lines == ["scored 4", "saved 5", "scored 8", "saved 10"]


def test_a_stop_result_ends_the_run_after_that_step():
    log = []
    stopper = Recorder("stop", 4, log, lambda ctx: HookResult(stop=True, note="stopping"))
    later = Recorder("later", 2, log)
    trainer, state, step, lines = run([stopper, later], end=10)
    assert (state, step, trainer.stopped) == (4, 4, True)
    assert [(name, s) for name, s, *_ in log] == [("later", 2), ("stop", 4), ("later", 4)]  # the step's hooks finish
    assert lines == ["stopping"]


def test_a_rollback_result_restores_the_state_and_step_and_skips_the_steps_later_hooks():
    log, rolled = [], []

    def back_once(ctx):
        if rolled:
            return HookResult()
        rolled.append(ctx.step)
        return HookResult(rollback=Rollback(state=100, step=2), note="rolled back to 2")

    guard = Recorder("guard", 4, log, back_once)
    later = Recorder("later", 1, log, lambda ctx: HookResult(logged=True))
    trainer, state, step, lines = run([guard, later], end=6)
    # steps 1..4, back to step 2 with state 100, then steps 3..6 again from it: 100 + 4
    assert (state, step) == (104, 6)
    runs = [(name, s, st) for name, s, st, *_ in log]
    assert ("later", 4, 4) not in runs  # the rolled-back step's later hooks did not run
    assert [(name, s, st) for name, s, st in runs if s >= 3] == [
        ("later", 3, 3), ("guard", 4, 4), ("later", 3, 101), ("guard", 4, 102), ("later", 4, 102), ("later", 5, 103),
        ("later", 6, 104)]
    assert [steps for name, s, st, row, steps in log if name == "later" and st == 101] == [[3]]  # a fresh window
    assert lines == ["rolled back to 2"]


class EveryTwo:
    """A metric hook like a downstream evaluation: every 2 steps, a score into that step's metrics row."""

    due_with = ()

    def __init__(self):
        self.steps = []

    def due(self, step):
        return step % 2 == 0

    def run(self, ctx):
        assert jax.tree.leaves(ctx.state["params"])  # it scores the step's parameters
        self.steps.append(ctx.step)
        return HookResult(metrics={"downstream_score": ctx.step / 100})


@pytest.mark.slow
def test_an_added_hook_scores_land_in_metrics_jsonl_at_its_steps(tiny_cfg):
    cfg = tiny_cfg("train.steps=6", "train.log_every=3", "checkpoint.every=100")
    hook = EveryTwo()
    result = train(cfg, hooks=[hook], progress=False)
    assert isinstance(result, TrainResult) and hook.steps == [2, 4, 6]
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # a row wherever the log or the added hook is due
    assert [r.get("downstream_score") for r in rows] == [0.02, None, 0.04, 0.06]
    assert all("loss" in r and "tokens_per_s" in r for r in rows)  # the same row as the training numbers
    assert result.final_step == 6 and result.start_step == 0 and not result.preempted
    assert sorted(result.losses) == [1, 2, 3, 4, 5, 6] and result.evaluated and result.eval_step == 6
    assert result.tokens == 6 * cfg.train.batch_size * cfg.data.seq_len and result.flops > result.tokens

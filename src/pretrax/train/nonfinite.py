"""What a non-finite loss or gradient does: train.nan_policy = stop | skip | rollback.

The train step never applies a non-finite update (step.py keeps the old
weights and moments and reports ``nonfinite``); the NanPolicy hook looks at
those flags before every log line and every checkpoint (it runs first whenever
another hook is due, hooks.py), so no checkpoint is written after an unhandled
bad step. Then:

* stop      raise TrainingError naming the first bad step; nothing new is saved.
* skip      that update was dropped; count it (``skipped_steps`` in the metrics) and go on.
* rollback  reload the newest checkpoint and go on from it with the batches
            that follow the bad one, so the batches since the checkpoint are
            skipped (PaLM's remedy for loss spikes). At most MAX_ROLLBACKS per
            run invocation, then it stops as ``stop`` would.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pretrax.errors import TrainingError
from pretrax.train import checkpoint as ckpt
from pretrax.train.hooks import Hook, HookResult, Rollback, StepContext

MAX_ROLLBACKS = 5


class NanPolicy:
    """The hook. No schedule of its own: due whenever a hook it guards (due_with, all the others) is.

    It looks at every step since the last metrics row, so a bad step before a checkpoint
    that no row logged yet is seen at that checkpoint and again at the next row; each
    skipped step is counted once.
    """

    def __init__(self, policy: str, manager, abstract_state: Callable[[], Any], due_with: Sequence[Hook] = ()):
        self.policy, self.manager, self.abstract_state = policy, manager, abstract_state
        self.due_with = tuple(due_with)
        self.skipped: list[int] = []
        self.rollbacks = 0

    def due(self, step: int) -> bool:
        return False

    def run(self, ctx: StepContext) -> HookResult:
        bad = bad_steps(ctx.window.steps)
        if bad and (self.policy == "stop" or (self.policy == "rollback" and self.rollbacks >= MAX_ROLLBACKS)):
            why = f", {MAX_ROLLBACKS} rollbacks already" if self.policy == "rollback" else ""
            ckpt.wait(self.manager)
            raise stop_error(self.policy, bad, self.manager.latest_step(), why)
        if bad and self.policy == "rollback":
            ckpt.wait(self.manager)
            back = self.manager.latest_step()
            if back is None:
                raise stop_error(self.policy, bad, None, ", nothing to roll back to")
            state, _ = ckpt.restore(self.manager, back, self.abstract_state())  # the data stream goes on
            self.rollbacks += 1
            return HookResult(rollback=Rollback(state, back),
                              note=f"step {bad[0]}: non-finite loss or gradients; rolled back to step {back} and "
                                   f"skipped batches {back + 1}..{ctx.step}")
        self.skipped += [s for s in bad if s not in self.skipped]  # skip: the weights never took those updates
        return HookResult(metrics={"skipped_steps": len(self.skipped)} if self.skipped else {})


def bad_steps(steps: Sequence[tuple[int, dict]]) -> list[int]:
    """Steps among (step, host metrics) whose loss or gradients were not finite."""
    return [s for s, m in steps if float(m["nonfinite"]) > 0]


def stop_error(policy: str, bad: Sequence[int], last_saved: int | None, why: str = "") -> TrainingError:
    saved = f"the newest checkpoint is step {last_saved}" if last_saved is not None else "no checkpoint was written"
    return TrainingError(
        f"non-finite loss or gradients at step {bad[0]} (train.nan_policy={policy}{why}); nothing was saved after "
        f"it and {saved}; set train.nan_policy=skip or rollback, or lower optim.lr")

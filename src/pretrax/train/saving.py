"""The checkpoint hook: save every checkpoint.every steps, at the last step, and when preempted."""

from __future__ import annotations

from typing import Sequence

from pretrax.config import Config
from pretrax.train import checkpoint as ckpt
from pretrax.train.hooks import Hook, HookResult, StepContext
from pretrax.train.metrics import MetricsWriter


class CheckpointSave:
    """Saves the state and the data iterator's position (asynchronously, checkpoint.py)."""

    def __init__(self, manager, data, cfg: Config, out: MetricsWriter, *, end: int, due_with: Sequence[Hook] = ()):
        self.manager, self.data, self.cfg, self.out, self.end = manager, data, cfg, out, end
        self.every = cfg.checkpoint.every
        self.due_with = tuple(due_with)  # the Preemption hook: a preempted run saves where it stops

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.end

    def run(self, ctx: StepContext) -> HookResult:
        ckpt.save(self.manager, ctx.step, ctx.state, ckpt.gather_data_state(self.data), self.cfg)
        self.out.flush()  # the metrics rows up to this checkpoint are stored with it
        return HookResult(note=f"checkpoint step {ctx.step}: saving to {self.manager.directory} (in the background)")

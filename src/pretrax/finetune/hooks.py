"""Fine-tuning's trainer hooks (train/hooks.py): validation accuracy, the metrics row, the checkpoint.

loop.py drives the steps with pretraining's Trainer; only what differs from pretraining's hooks is
here: the row is the fine-tuning step's own metrics (no tokens/s or MFU: examples vary in length), the
evaluation scores the task's validation file, and a checkpoint's "data state" is the task and the
step, since a batch is a function of the step alone. The order is train/hooks.py's:

    Validation -> TaskMetricsLog -> TaskCheckpoint
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from pretrax.train import checkpoint as ckpt
from pretrax.train.hooks import Hook, HookResult, StepContext
from pretrax.train.metrics import MetricsWriter
from pretrax.train.preemption import Preemption, PreemptionWatcher
from pretrax.train.saving import CheckpointSave


class Validation:
    """Validation-set scores every finetune.eval_every steps and at the last step, into that step's row."""

    due_with = ()

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int, total: int):
        self.evaluate, self.every, self.total = evaluate, every, total
        self.latest: dict[str, float] | None = None  # the newest scores of this invocation

    def due(self, step: int) -> bool:
        return step == self.total or (self.every > 0 and step % self.every == 0)

    def run(self, ctx: StepContext) -> HookResult:
        self.latest = self.evaluate(ctx.state["params"])
        return HookResult(metrics=self.latest)


class TaskMetricsLog:
    """Every finetune.log_every steps, at the run's end and with each evaluation: the last step's metrics
    (loss, task_loss, lm_loss, grad_norm, accuracy, lr) and the evaluation's; keeps every step's loss."""

    def __init__(self, out: MetricsWriter, *, every: int, end: int, due_with: tuple[Hook, ...] = ()):
        self.out, self.every, self.end, self.due_with = out, every, end, due_with
        self.losses: dict[int, float] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.end

    def run(self, ctx: StepContext) -> HookResult:
        for s, m in ctx.window.steps:
            self.losses[s] = float(m["loss"])
        row = {k: float(v) for k, v in ctx.window.steps[-1][1].items()}
        row.update(ctx.row)
        self.out.write(ctx.step, row)
        return HookResult(logged=True)


class TaskCheckpoint(CheckpointSave):
    """CheckpointSave's schedule; saves the task and the step as the data state (no iterator to gather),
    without a line: fine-tuning prints only its rows."""

    def __init__(self, manager, task_state: dict, cfg, out: MetricsWriter, *, end: int,
                 due_with: Sequence[Hook] = ()):
        super().__init__(manager, None, cfg, out, end=end, due_with=due_with)
        self.task_state = task_state  # {"step": 0, "task": ..., "pretrained": ...}

    def run(self, ctx: StepContext) -> HookResult:
        ckpt.save(self.manager, ctx.step, ctx.state, {**self.task_state, "step": ctx.step}, self.cfg)
        self.out.flush()  # the rows up to this checkpoint are stored with it
        return HookResult()


@dataclasses.dataclass(frozen=True)
class FinetuneHooks:
    """The hooks by name (for finetune()'s result) and in the order they run."""

    validation: Validation
    log: TaskMetricsLog
    checkpoint: TaskCheckpoint
    preemption: Preemption

    @property
    def all(self) -> list[Hook]:
        return [self.validation, self.log, self.checkpoint, self.preemption]


def finetune_hooks(evaluate: Callable[[Any], dict[str, float]], out: MetricsWriter, manager, task_state: dict,
                   cfg, ft, watcher: PreemptionWatcher, *, total: int, end: int) -> FinetuneHooks:
    """ft: the task's finetune section (eval_every, log_every); cfg.checkpoint.every: its checkpoint_every."""
    validation = Validation(evaluate, ft.eval_every, total)
    log = TaskMetricsLog(out, every=ft.log_every, end=end, due_with=(validation,))
    preemption = Preemption(watcher)  # SIGTERM: the step's checkpoint is saved, then the run stops
    checkpoint = TaskCheckpoint(manager, task_state, cfg, out, end=end, due_with=(preemption,))
    return FinetuneHooks(validation, log, checkpoint, preemption)

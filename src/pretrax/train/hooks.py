"""Trainer hooks: the work beside the train steps, each with a schedule (`due`) and a typed result.

The loop (trainer.py) only drives steps. After each step it asks every hook
``due(step)`` once; a hook is also due at any step where one of its
``due_with`` hooks is. At a step where some hook is due the loop fetches the
metrics of the steps since the last row (one device sync, `Window`), then runs
the due hooks in the order of its list and applies each `HookResult` at once.
train() builds the list in this order (loop.py, standard_hooks):

    NanPolicy -> Evaluation, then any added metric hooks -> MetricsLog -> CheckpointSave -> Preemption

* NanPolicy first, so nothing is logged or saved after an unhandled bad step;
  it has no schedule of its own and is due whenever any other hook is.
* metric hooks before MetricsLog, which is due whenever one of them is: what
  they return in `metrics` lands in the row MetricsLog writes at that step
  (metrics.jsonl and TensorBoard). Their time is not counted as training time.
* CheckpointSave after MetricsLog, so the rows up to a checkpoint are stored with it.
* Preemption last: the checkpoint of its step is saved, then the run stops.

`pretrax finetune` drives the same Trainer with fine-tuning's hooks, in the same order
(finetune/hooks.py: Validation -> TaskMetricsLog -> TaskCheckpoint).

A hook that meets something a person must act on raises the project's error
(the NaN policy `stop` raises TrainingError); an error is not a result.

Adding a hook, e.g. downstream-task scores every 500 steps into metrics.jsonl::

    class Downstream:
        due_with = ()

        def __init__(self, score):
            self.score = score  # params -> {"hellaswag_acc": 0.31, ...}

        def due(self, step: int) -> bool:
            return step % 500 == 0

        def run(self, ctx: StepContext) -> HookResult:
            scores = self.score(ctx.state["params"])
            return HookResult(metrics=scores, note=f"downstream at step {ctx.step}: {scores}")

    train(cfg, hooks=[Downstream(score)])  # run with the metric hooks: the scores are in that step's row

(for every run, `pretrax train` included, add it to `metric_hooks` in loop.standard_hooks instead).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Protocol, Sequence

import jax


class Hook(Protocol):
    due_with: Sequence["Hook"]  # also due at any step where one of these is due by its own schedule

    def due(self, step: int) -> bool:
        """Whether this hook runs after `step`, by its own schedule (asked once per step, in list order)."""

    def run(self, ctx: "StepContext") -> "HookResult":
        """Do the hook's work at ctx.step; say what the loop must do about it."""


@dataclasses.dataclass(frozen=True)
class Rollback:
    """Continue from `state` as it was after `step` (the data stream goes on where it is)."""

    state: Any
    step: int


@dataclasses.dataclass(frozen=True)
class HookResult:
    """What a hook did at a step, for the loop to apply (trainer.py, Trainer._apply)."""

    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # into this step's row
    note: str | None = None  # a line for the person watching, printed after the step's hooks ran
    logged: bool = False  # the step's row was written: the next row's throughput counts from now
    stop: bool = False  # end the run after this step
    rollback: Rollback | None = None  # go back; the step's later hooks do not run


class Window:
    """The steps since the last metrics row: their metrics, kept on device until a hook is due.

    Fetching only when a hook is due keeps the device from syncing every step; the time
    of the fetch (when those steps had all finished) ends the window's training time.
    """

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.opened_at = time.perf_counter()
        self.fetched_at = self.opened_at
        self._device: list[tuple[int, Any]] = []
        self.steps: list[tuple[int, dict]] = []  # (step, host metrics) up to the last fetch

    def add(self, step: int, metrics: Any) -> None:
        self._device.append((step, metrics))

    def fetch(self) -> list[tuple[int, dict]]:
        """Every step's metrics on the host (one transfer for the steps not fetched before)."""
        if self._device:
            host = jax.device_get([m for _, m in self._device])
            self.steps += [(s, m) for (s, _), m in zip(self._device, host)]
            self._device = []
        self.fetched_at = time.perf_counter()
        return self.steps


@dataclasses.dataclass
class StepContext:
    """What a hook sees at a step where it is due."""

    step: int
    state: Any  # the train state after `step` (params, opt_state, step, rng)
    window: Window  # the steps since the last row, fetched
    row: dict[str, Any] = dataclasses.field(default_factory=dict)  # metrics the step's earlier hooks returned

"""Preemption: SIGTERM (how TPU VMs and SLURM announce the end) -> save at the current step and exit.

The handler only sets a flag; the Preemption hook asks ``requested(step)``
after each step (the loop asks every hook's schedule once per step). With several processes every one of them must stop at the SAME
step (the save is collective), so the flags are all-gathered every
``sync_every`` steps and all processes stop when any one was signalled. A
second SIGTERM while saving is ignored: the save finishes first.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

from pretrax.train.hooks import HookResult, StepContext

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the run did not finish; a restart loop resumes it


class PreemptionWatcher:
    """Context manager: installs the SIGTERM handler (main thread only) and restores the old one on exit."""

    def __init__(self, sync_every: int = 1):
        self.sync_every = max(1, sync_every)
        self._flag = False
        self._previous = None

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self._flag = True

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step``: this process's flag, or, with several processes, anyone's."""
        if jax.process_count() == 1:
            return self._flag
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([self._flag], np.int32))
        return bool(np.any(flags))


class Preemption:
    """The hook: due when a SIGTERM arrived (on any process); CheckpointSave, due with it, saves first."""

    due_with = ()

    def __init__(self, watcher: PreemptionWatcher):
        self.watcher = watcher
        self.stopped_at: int | None = None

    def due(self, step: int) -> bool:
        return self.watcher.requested(step)  # with several processes, a collective: asked once per step by all

    def run(self, ctx: StepContext) -> HookResult:
        self.stopped_at = ctx.step
        return HookResult(stop=True, note=f"preempted (SIGTERM) after step {ctx.step}: checkpoint saved; "
                                          "run the same command to resume")

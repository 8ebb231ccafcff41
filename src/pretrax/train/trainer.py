"""The step loop: draw a batch, run the train step, run the hooks that are due (hooks.py), apply their results.

Everything else a run does (metrics rows, evaluation, checkpoints, the NaN
policy, preemption) is a hook, so this file is the whole of what happens
between two steps, and each HookResult is applied in one place (_apply).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pretrax.train.hooks import Hook, HookResult, StepContext, Window


class Trainer:
    """Drives steps start+1..end; after each, runs the due hooks in list order.

    train_step(state, batch) -> (state, device metrics); batch(step) -> the step's global batch;
    say(line) shows a line to the person watching; advance() moves the progress bar one step.
    """

    def __init__(self, train_step: Callable[[Any, Any], tuple[Any, Any]], batch: Callable[[int], Any],
                 hooks: Sequence[Hook], *, say: Callable[[str], None] = print,
                 advance: Callable[[], None] = lambda: None):
        self.train_step, self.batch, self.hooks = train_step, batch, list(hooks)
        self.say, self.advance = say, advance
        self.stopped = False  # a hook ended the run before `end` (preemption)

    def run(self, state: Any, start: int, end: int) -> tuple[Any, int]:
        """Train from the state after step `start` to step `end` (or until a hook stops it): (state, last step)."""
        self.state, self.step, self.window = state, start, Window(start)
        while self.step < end and not self.stopped:
            self.step += 1
            self.state, metrics = self.train_step(self.state, self.batch(self.step))
            self.window.add(self.step, metrics)
            self.advance()
            due = self.due(self.step)
            if due:
                self.run_hooks(due)
        return self.state, self.step

    def due(self, step: int) -> list[Hook]:
        """The hooks to run after `step`, in list order; each hook's own schedule is asked once."""
        own = [hook.due(step) for hook in self.hooks]
        scheduled = {id(hook) for hook, yes in zip(self.hooks, own) if yes}
        return [hook for hook, yes in zip(self.hooks, own)
                if yes or any(id(other) in scheduled for other in getattr(hook, "due_with", ()))]

    def run_hooks(self, due: Sequence[Hook]) -> None:
        self.window.fetch()  # one device sync for the hooks of this step
        ctx = StepContext(self.step, self.state, self.window)
        notes: list[str] = []
        for hook in due:
            result = hook.run(ctx)
            if result.note:
                notes.append(result.note)
            if not self._apply(result, ctx):
                break
        for note in notes:  # after the step's row, whose progress line comes first
            self.say(note)

    def _apply(self, result: HookResult, ctx: StepContext) -> bool:
        """Apply one hook's result; False when the step's later hooks must not run (a rollback)."""
        ctx.row.update(result.metrics)
        if result.logged:
            self.window = Window(self.step)  # the next row's training time starts now
        if result.rollback is not None:
            self.state, self.step = result.rollback.state, result.rollback.step
            self.window = Window(self.step)  # the rolled-back steps are not logged
            return False
        self.stopped = self.stopped or result.stop
        return True

"""Downstream tasks scored while training (config `eval`): the hook that runs pretrax.evaluation on the
parameters the run holds, so the scores land in the metrics row, TensorBoard and a sweep's results.csv."""

from __future__ import annotations

from typing import Any

from pretrax.config import Config
from pretrax.train.hooks import HookResult, StepContext


class TaskEvaluation:
    """The hook: eval.tasks every eval.every steps (0: with train.eval_every) and at the last step."""

    due_with = ()

    def __init__(self, cfg: Config, setup: Any, tokenizer: Any):
        self.cfg, self.setup, self.tokenizer = cfg, setup, tokenizer
        self.every = cfg.eval.every or cfg.train.eval_every
        self.latest: tuple[int, dict[str, float]] | None = None  # (step, scores) of the newest evaluation

    def due(self, step: int) -> bool:
        return step == self.cfg.train.steps or (self.every > 0 and step % self.every == 0)

    def run(self, ctx: StepContext) -> HookResult:
        from pretrax.evaluation import evaluate_tasks

        e = self.cfg.eval
        scores = evaluate_tasks(self.setup, ctx.state["params"], self.tokenizer, list(e.tasks), e.limit or None,
                                batch_size=e.batch_size)
        self.latest = (ctx.step, scores)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        return HookResult(metrics=scores, note=f"tasks at step {ctx.step}: {shown}")


def task_evaluation(cfg: Config, setup: Any, tokenizer: Any) -> TaskEvaluation | None:
    """The hook for cfg.eval.tasks (None without tasks); unknown task names and bad task files are refused
    here, before the run writes anything."""
    if not cfg.eval.tasks:
        return None
    from pretrax.evaluation.evaluate import check_task_names

    check_task_names(list(cfg.eval.tasks), [])
    return TaskEvaluation(cfg, setup, tokenizer)

"""train(): check the config, restore or initialise the run, then drive the steps with the standard hooks.

Running train() again on a run dir that holds checkpoints continues from the
newest complete one: parameters, optimizer state, step and the data
iterator's position all come back, so the resumed run prints the same losses
the uninterrupted run would have. The steps are driven by trainer.py; metrics
rows, evaluation, checkpoints, the NaN policy and preemption are hooks
(hooks.py), built here in one list (standard_hooks).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax

from pretrax import storage
from pretrax.config import Config
from pretrax.data.pipeline import check_splits, make_train_iterator
from pretrax.data.prefetch import Prefetcher
from pretrax.data.tokenizer import config_tokenizer
from pretrax.errors import ConfigError, DataError
from pretrax.perf import device_peak
from pretrax.plan import RunPlan, make_plan
from pretrax.train import checkpoint as ckpt
from pretrax.train import run_lock, run_record
from pretrax.train.evaluation import Evaluation, eval_config, make_evaluator
from pretrax.train.hooks import Hook
from pretrax.train.metrics import MetricsWriter
from pretrax.train.metrics_log import MetricsLog
from pretrax.train.nonfinite import NanPolicy
from pretrax.train.preemption import Preemption, PreemptionWatcher
from pretrax.train.saving import CheckpointSave
from pretrax.train.state import TrainSetup, init_state
from pretrax.train.step import make_train_step, to_global
from pretrax.train.task_evaluation import TaskEvaluation, task_evaluation
from pretrax.train.trainer import Trainer


def check_run_dir(run_dir: str) -> str:
    """A usable run dir (local, or gs:// with a bucket that answers), checked before anything is written."""
    storage.check_reachable(run_dir, "run.dir")
    if storage.isfile(run_dir):
        raise ConfigError(f"run.dir {run_dir!r} is a file; give a directory (new or holding an earlier run)")
    return run_dir


def write_config(cfg: Config, run_dir: str) -> None:
    """RUN_DIR/config.yaml, replaced atomically so a crash never leaves half a file."""
    if jax.process_index() != 0:
        return
    storage.write_text(storage.join(run_dir, "config.yaml"), cfg.to_yaml())


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What train() reports: where the run got to, its losses and its newest held-out evaluation."""

    start_step: int  # the step this invocation resumed from (0: a fresh run)
    final_step: int  # the last step trained (or restored, when the run had finished before)
    losses: dict[int, float]  # the loss of every step this invocation logged (after a rollback, its new loss)
    # the newest held-out evaluation of this invocation (eval_step: the step it scored; None: none was made)
    eval_step: int | None
    eval_loss: float | None
    eval_bits_per_byte: float | None
    skipped_steps: tuple[int, ...]  # train.nan_policy=skip: the steps whose update was dropped
    rollbacks: int  # train.nan_policy=rollback: how often this invocation went back to a checkpoint
    preempted: bool  # SIGTERM: the checkpoint of final_step is saved and the run is not finished
    tokens: int  # tokens trained on through final_step (all invocations; decoder tokens for the encoder-decoder)
    flops: float  # training FLOPs of those tokens (attention counted as train.mfu_attention says)
    wall_s: float  # this invocation's time, start-up to return
    task_scores: dict[str, float]  # eval.tasks: the newest downstream scores of this invocation ({}: none)
    params: Any = dataclasses.field(repr=False)  # the final parameters (sharded jax.Arrays)
    setup: TrainSetup = dataclasses.field(repr=False)
    tokenizer: Any = dataclasses.field(repr=False)

    @property
    def evaluated(self) -> bool:
        return self.eval_loss is not None


def train(cfg: Config, *, stop_at: int | None = None, progress: bool | None = None,
          batch_hook: Callable[[int, dict], dict] | None = None, allow_data_change: bool = False,
          hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train (or resume) the run described by cfg; returns the final numbers.

    batch_hook(step, host_batch) -> host_batch runs on each batch before its step: the seam for
    fault injection (tests put a NaN into a batch there) and for batch surgery.
    allow_data_change: resume even though the data section, seed or batch size differ from the
    checkpoint's (refused otherwise, run_record.py); the change is recorded in the run's history.
    hooks: more trainer hooks (hooks.py), run with the evaluation, before the metrics row is
    written: what they return in `metrics` is in that step's row of metrics.jsonl and TensorBoard.
    """
    started = time.perf_counter()
    run_dir = check_run_dir(cfg.run.dir)
    eval_config(cfg)  # refuses an eval objective the model kind cannot be scored on
    tokenizer = config_tokenizer(cfg.data)
    if getattr(tokenizer, "ids_only", False):  # an import without a usable tokenizer (pretrax import)
        raise ConfigError("data.tokenizer is none (token ids only), so training cannot read text; set "
                          "data.tokenizer to 'bytes' or a SentencePiece .model whose ids fit model.vocab_size")
    check_splits(cfg)  # no training or held-out documents: refused now, not at the first eval after training
    plan = make_plan(cfg, tokenizer=tokenizer)  # sizes, vocabulary and batch checks, mesh, state layout, FLOPs
    tasks = task_evaluation(cfg, plan.setup, tokenizer)  # eval.tasks; unknown names refused before any write
    with run_lock.hold(run_dir, primary=jax.process_index() == 0):  # one trainer per run dir; a second is refused
        return _train(cfg, run_dir, plan, stop_at, progress, batch_hook, allow_data_change, tasks, hooks, started)


def _train(cfg: Config, run_dir: str, plan: RunPlan, stop_at: int | None,
           progress: bool | None, batch_hook: Callable[[int, dict], dict] | None,
           allow_data_change: bool, tasks: TaskEvaluation | None, extra_hooks: Sequence[Hook],
           started: float) -> TrainResult:
    """The rest of train(), run while this process holds the run dir's lock (run_lock.py)."""
    setup, tokenizer = plan.setup, plan.tokenizer
    # Everything is checked, and the checkpoint read, before anything is written.
    data = make_train_iterator(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    if cfg.data.prefetch:
        data = Prefetcher(data, cfg.data.prefetch)
    # the newest checkpoint that restores; damaged newer ones are skipped (one line on stderr), then set aside
    start, state, data_state, damaged = ckpt.restore_latest_good(run_dir, cfg, setup.abstract_state())
    saved, data_change, position = None, {}, None
    if start is not None:
        saved = ckpt.saved_config(run_dir, start, cfg)
        same_documents = (data_state or {}).get("corpus") == data.get_state().get("corpus")  # data.paths moved, not changed
        data_change = run_record.check_data_order(saved, cfg, start, allow=allow_data_change,
                                                  same_documents=same_documents)
        position = resume_data(data, data_state, data_change)
    else:
        start = 0
        state = init_state(setup, cfg.run.seed)
    storage.makedirs(run_dir)
    write_config(cfg, run_dir)
    if jax.process_index() == 0:
        run_record.append(run_dir, cfg, first_step=start + 1, resumed_from=start or None, saved=saved,
                          data_change=data_change, data_position=position)
    manager = ckpt.open_manager(run_dir, cfg.checkpoint, set_aside=damaged)

    total = cfg.train.steps
    end = min(total, stop_at) if stop_at else total
    out = MetricsWriter(run_dir, total, start, progress=progress)
    tokens_per_step = plan.sizes.tokens_per_step
    fpt = plan.flops.per_token  # attention as train.mfu_attention says
    peak = device_peak(cfg.train.peak)  # per-device TFLOP/s for MFU; unknown (no mfu) is said once at start-up
    out.print(startup_summary(plan, peak, start))

    train_step = make_train_step(setup)
    evaluate = make_evaluator(cfg, setup, tokenizer)

    def batch(step: int) -> dict:
        host = next(data) if batch_hook is None else batch_hook(step, next(data))
        return to_global(setup, host)

    try:
        with PreemptionWatcher(sync_every=cfg.train.log_every) as watcher:  # SIGTERM: save, then stop
            hooks = standard_hooks(cfg, out, manager, data, setup, evaluate, watcher, tasks, extra_hooks, end=end,
                                   tokens_per_step=tokens_per_step, flops_per_token=fpt, peak=peak)
            trainer = Trainer(train_step, batch, hooks.all, say=out.print, advance=out.advance)
            state, step = trainer.run(state, start, end)
        ckpt.wait(manager, cfg.checkpoint.keep)
    finally:
        data.close()  # the prefetch thread and any document worker processes
        manager.close()
        out.close()
    latest = hooks.evaluation.latest
    if step == total and latest is None:  # resumed a finished run: nothing trained, still report
        latest = (step, evaluate(state["params"]))
    scores = latest[1] if latest else {}
    task_latest = tasks.latest if tasks is not None else None
    return TrainResult(
        start_step=start, final_step=step, losses=hooks.log.losses,
        eval_step=latest[0] if latest else None, eval_loss=scores.get("eval_loss"),
        eval_bits_per_byte=scores.get("eval_bits_per_byte"), skipped_steps=tuple(hooks.nan.skipped),
        rollbacks=hooks.nan.rollbacks, preempted=hooks.preemption.stopped_at is not None, tokens=step * tokens_per_step,
        flops=step * tokens_per_step * fpt, wall_s=time.perf_counter() - started,
        task_scores=dict(task_latest[1]) if task_latest else {},
        params=state["params"], setup=setup, tokenizer=tokenizer)


@dataclasses.dataclass(frozen=True)
class StandardHooks:
    """train()'s hooks, by name (for its result) and in the order they run (hooks.py says why)."""

    nan: NanPolicy
    evaluation: Evaluation
    metric_hooks: tuple[Hook, ...]  # the evaluations, then train(hooks=...): their scores go into the row
    log: MetricsLog
    checkpoint: CheckpointSave
    preemption: Preemption

    @property
    def all(self) -> list[Hook]:
        return [self.nan, *self.metric_hooks, self.log, self.checkpoint, self.preemption]


def standard_hooks(cfg: Config, out: MetricsWriter, manager, data, setup, evaluate, watcher: PreemptionWatcher,
                   tasks: TaskEvaluation | None = None, extra: Sequence[Hook] = (), *, end: int,
                   tokens_per_step: int, flops_per_token: float, peak) -> StandardHooks:
    """The NaN policy; the held-out evaluation, the downstream tasks and `extra` (metric hooks); the metrics
    row, checkpoints, preemption."""
    evaluation = Evaluation(evaluate, cfg.train.eval_every, cfg.train.steps)
    metric_hooks = (evaluation, *((tasks,) if tasks is not None else ()), *extra)
    log = MetricsLog(cfg, out, every=cfg.train.log_every, end=end, tokens_per_step=tokens_per_step,
                     flops_per_token=flops_per_token, devices=jax.device_count(), peak=peak,
                     due_with=metric_hooks)
    preemption = Preemption(watcher)
    checkpoint = CheckpointSave(manager, data, cfg, out, end=end, due_with=(preemption,))
    nan = NanPolicy(cfg.train.nan_policy, manager, setup.abstract_state,
                    due_with=(*metric_hooks, log, checkpoint, preemption))
    return StandardHooks(nan, evaluation, metric_hooks, log, checkpoint, preemption)


def resume_data(data, data_state: dict, data_change: dict) -> str | None:
    """Put the data iterator where the checkpoint left it; after an allowed data change, as near as it can.

    With the data unchanged the position is restored exactly (None is returned). After an
    allowed change each row keeps its place (document index, offset) in the new stream when
    the rows are the same ("kept"); when the batch's rows differ the stream starts afresh
    ("restarted"). Either way the run's history says which.
    """
    if not data_change:
        data.set_state(data_state)
        return None
    fresh = data.get_state()  # this run's metadata (seed, corpus, objective, global batch)
    if any(fresh.get(k) != data_state.get(k) for k in ("objective", "layout")):
        return "restarted"  # a position counts tokens or examples of one objective's documents
    moved = {**data_state, **{k: v for k, v in fresh.items() if k not in ("first_row", "doc", "offset")}}
    try:
        data.set_state(moved)
        return "kept"
    except (DataError, KeyError, ValueError):  # other rows: the batch size changed
        return "restarted"


def startup_summary(plan: RunPlan, peak, start: int) -> str:
    """The run dir, the parameter-group table, then the plan (mesh, tokens per step, FLOPs) with the MFU peak."""
    groups = plan.setup.param_groups
    *lines, flops_line = plan.lines()
    return "\n".join([
        f"run dir: {storage.absolute(plan.cfg.run.dir)}" + (f" (resuming from step {start})" if start else ""),
        f"parameters: {plan.params:,} ({groups.size(decayed=True):,} with weight decay)",
        groups.summary(),
        *lines,
        f"{flops_line}; {peak.describe()}",
    ])

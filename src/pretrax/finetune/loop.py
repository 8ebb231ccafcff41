"""`pretrax finetune RUN_DIR TASK.yaml`: GPT-1's supervised fine-tuning of a pretrained decoder.

Everything is checked before anything is written: the task file, the pretrained run (a decoder
with a complete checkpoint), every example of both splits, the batch against the mesh. Then
the newest pretrained checkpoint's weights, on the run's own mesh and shardings, get a linear head
(step.py) and train on the task's examples in its own run dir (RUN_DIR/finetune/<name>, or --out):
config.yaml and task.yaml, metrics.jsonl, Orbax checkpoints. Running the same command again
resumes from the newest complete one: the examples' order is a function of (seed, step) only, so
the resumed run computes the same losses the uninterrupted one would have. The steps are driven by
pretraining's Trainer (train/trainer.py), so there is one training loop; the metrics rows, the
validation and the checkpoints are fine-tuning's hooks (hooks.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
import yaml

from pretrax import config as config_lib
from pretrax import storage
from pretrax.errors import CheckpointError, ConfigError
from pretrax.finetune import step as ft_step
from pretrax.finetune.hooks import finetune_hooks
from pretrax.finetune.task import Task, load_examples, load_task
from pretrax.finetune.transforms import encode_batch, specials_for
from pretrax.models.family import family_of
from pretrax.plan import make_plan
from pretrax.train import checkpoint as ckpt
from pretrax.train import run_lock
from pretrax.train.metrics import MetricsWriter
from pretrax.train.preemption import PreemptionWatcher
from pretrax.train.trainer import Trainer


@dataclasses.dataclass
class Prepared:
    """Everything a fine-tuning run needs, checked, before anything is written."""

    task: Task
    cfg: Any  # the pretrained run's config (+ overrides), with the fine-tuning optimizer and checkpoint policy
    pre_cfg: Any  # the pretrained run's config (+ overrides) as its checkpoint was written
    run_dir: str
    out_dir: str
    pretrained_step: int
    pre_setup: Any
    setup: ft_step.FinetuneSetup
    train: dict  # encoded arrays (N, K, T) ...
    validation: dict
    total_steps: int
    steps_per_epoch: int


def prepare(run_dir: str, task_path: str, overrides: list[str] = (), out: str | None = None,
            task: Task | None = None) -> Prepared:
    task = task or load_task(task_path)
    examples = {split: load_examples(task, split) for split in ("train", "validation")}  # before the run dir
    saved, pretrained_step = pretrained_config(run_dir)
    cfg = config_lib.from_dict(saved, list(overrides))
    if family_of(cfg.model).has_encoder:
        raise ConfigError(f"run dir {run_dir!r} holds an {cfg.model.kind} model; fine-tuning supports decoder "
                          "models (GPT-1's case: model.kind decoder)")
    # the pretrained model on this machine's devices (restored whole, optimizer state as it was saved); the
    # fine-tuning batch is checked against the mesh below
    plan = make_plan(cfg, training=False)
    tokenizer = plan.tokenizer
    if getattr(tokenizer, "ids_only", False):
        raise ConfigError("the run's data.tokenizer is none (token ids only), so task text cannot be encoded; "
                          "fine-tune a run trained with 'bytes' or a SentencePiece .model")
    vocab, window = plan.vocab_size, plan.sizes.window
    specials = specials_for(tokenizer, vocab, task.delimiter)
    max_len = task.max_len or cfg.data.seq_len
    if cfg.model.positions == "learned" and max_len > window:
        raise ConfigError(f"task max_len {max_len} is longer than the model's {window} learned "
                          f"positions; use max_len <= {window}")
    arrays = {}
    for split in ("train", "validation"):
        arrays[split] = encode_batch(task.type, examples[split], tokenizer.encode, specials, max_len, tokenizer.pad_id)
    ft = task.finetune
    n_train = len(arrays["train"]["label"])
    steps_per_epoch = -(-n_train // ft.batch_size)
    total = ft.steps or ft.epochs * steps_per_epoch
    warmup = max(1, math.ceil(ft.warmup * total)) if ft.warmup > 0 else 0
    optim = dataclasses.replace(cfg.optim, name="adamw", lr=ft.lr, warmup_steps=warmup, schedule="linear",
                                min_lr_ratio=0.0,
                                weight_decay=cfg.optim.weight_decay if ft.weight_decay is None else ft.weight_decay)
    every = ft.checkpoint_every or steps_per_epoch
    pre_cfg = cfg
    cfg = dataclasses.replace(cfg, optim=optim,
                              checkpoint=dataclasses.replace(cfg.checkpoint, every=every, keep=ft.keep))
    mesh, ways = plan.mesh, plan.data_parallel
    if ft.batch_size % ways:
        raise ConfigError(f"finetune.batch_size {ft.batch_size} is not divisible by the data-parallel size {ways} "
                          f"(mesh.data * mesh.fsdp); use a multiple of {ways}")
    out_dir = out or storage.join(run_dir, "finetune", task.name)
    if storage.absolute(out_dir).rstrip("/") == storage.absolute(run_dir).rstrip("/"):
        raise ConfigError("--out is the pretrained run dir itself; give a directory of its own")
    if storage.isfile(out_dir):
        raise ConfigError(f"fine-tuning output {out_dir!r} is a file; give a directory (--out)")
    pre_setup = plan.setup
    dropout = ft.classifier_dropout if ft.classifier_dropout is not None else (0.1 if cfg.model.dropout else 0.0)
    head_outputs = 1 if task.type == "multiple_choice" else task.num_classes
    setup = ft_step.make_setup(cfg, mesh, pre_setup.graphdef, pre_setup.abstract_params, pre_setup.logical_specs,
                               kind=task.type, head_outputs=head_outputs, lm_weight=ft.lm_weight,
                               classifier_dropout=dropout, optim=optim, total_steps=total)
    return Prepared(task, cfg, pre_cfg, run_dir, out_dir, pretrained_step, pre_setup, setup, arrays["train"],
                    arrays["validation"], total, steps_per_epoch)


def pretrained_config(run_dir: str) -> tuple[dict, int]:
    """The config saved with a run's newest complete checkpoint, and its step (read only)."""
    storage.check_reachable(run_dir, "run dir")
    if not storage.isdir(run_dir):
        what = "is a file, not a run dir" if storage.isfile(run_dir) else "does not exist"
        raise ConfigError(f"run dir {run_dir!r} {what}; give the run.dir of a pretraining run")
    if ckpt.latest_step(run_dir) is None:
        raise CheckpointError(f"run dir {run_dir!r} holds no complete checkpoint to fine-tune from; train it "
                              "first (pretrax train CONFIG run.dir=...)")
    with ckpt.open_manager(run_dir, config_lib.CheckpointSection(), read_only=True) as reader:
        for step in sorted(reader.all_steps(), reverse=True):
            try:
                return ckpt.read_config(reader, step), step
            except Exception:  # a damaged checkpoint: restore_latest_good names it
                continue
    raise CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(run_dir)} has a readable config")


def train_batch(p: Prepared, step: int) -> dict:
    """The examples of 1-based `step`: positions (step-1)*B .. step*B-1 of one permutation per epoch
    (from the seed and the epoch), so a batch depends on the step alone (exact resume)."""
    ft = p.task.finetune
    n = len(p.train["label"])
    index = np.arange((step - 1) * ft.batch_size, step * ft.batch_size)
    epochs, within = np.divmod(index, n)
    perms = {e: np.random.default_rng([ft.seed, int(e)]).permutation(n) for e in np.unique(epochs)}
    rows = np.asarray([perms[e][i] for e, i in zip(epochs, within)])
    batch = {k: v[rows] for k, v in p.train.items()}
    batch["weight"] = np.ones(len(rows), np.float32)
    return _local(batch)


def eval_batches(p: Prepared) -> list[dict]:
    """The validation set in batches of finetune.batch_size, the last padded with weight-0 rows."""
    b = p.task.finetune.batch_size
    n = len(p.validation["label"])
    out = []
    for start in range(0, n, b):
        rows = np.arange(start, start + b)
        batch = {k: v[np.minimum(rows, n - 1)] for k, v in p.validation.items()}
        batch["weight"] = (rows < n).astype(np.float32)
        out.append(_local(batch))
    return out


def _local(batch: dict) -> dict:
    """This process's rows of a global batch (every process holds the same arrays)."""
    if jax.process_count() == 1:
        return batch
    n = len(batch["label"]) // jax.process_count()
    lo = jax.process_index() * n
    return {k: v[lo:lo + n] for k, v in batch.items()}


def evaluate(p: Prepared, eval_step, params) -> dict[str, float]:
    sums = jax.device_get([eval_step(params, ft_step.to_global(p.setup, b)) for b in eval_batches(p)])
    total = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
    task = total["task_sum"] / max(total["examples"], 1.0)
    lm = total["lm_sum"] / max(total["lm_tokens"], 1.0)
    return {"eval_accuracy": total["correct"] / max(total["examples"], 1.0), "eval_task_loss": task,
            "eval_lm_loss": lm, "eval_loss": task + p.setup.lm_weight * lm, "eval_examples": total["examples"]}


def finetune(run_dir: str, task_path: str, overrides: list[str] = (), *, out: str | None = None,
             stop_at: int | None = None, progress: bool | None = None, task: Task | None = None) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) RUN_DIR's newest checkpoint on a task; returns the final numbers."""
    p = prepare(run_dir, task_path, overrides, out, task)
    with run_lock.hold(p.out_dir, primary=jax.process_index() == 0):
        return _finetune(p, stop_at, progress)


def _finetune(p: Prepared, stop_at: int | None, progress: bool | None) -> dict[str, Any]:
    setup, ft, cfg = p.setup, p.task.finetune, p.cfg
    start, state, data_state, damaged = ckpt.restore_latest_good(p.out_dir, cfg, setup.abstract_state())
    if start is not None:
        changed = config_lib.diff(data_state.get("task", {}), _plain(p.task.to_dict()))
        if changed:
            raise ConfigError(f"{p.out_dir} holds a fine-tuning run of a different task ({', '.join(changed)} "
                              "differ); use the same task file, or --out for a new run")
        pretrained = data_state.get("pretrained", {})
    else:
        _, pre_state, _, _ = ckpt.restore_latest_good(p.run_dir, p.pre_cfg, p.pre_setup.abstract_state(), announce=False)
        pretrained = {"run_dir": storage.absolute(p.run_dir), "step": p.pretrained_step}
        state = ft_step.init_state(setup, pre_state["params"], ft.seed)
        del pre_state
        start = 0
    storage.makedirs(p.out_dir)
    if jax.process_index() == 0:
        storage.write_text(storage.join(p.out_dir, "config.yaml"), cfg.to_yaml())
        storage.write_text(storage.join(p.out_dir, "task.yaml"), yaml.safe_dump(_plain(p.task.to_dict()), sort_keys=False))
    manager = ckpt.open_manager(p.out_dir, cfg.checkpoint, set_aside=damaged)
    total = p.total_steps
    end = min(total, stop_at) if stop_at else total
    out = MetricsWriter(p.out_dir, total, start, progress=progress)
    out.print(f"fine-tuning {p.task.name!r} ({p.task.type}) from {pretrained.get('run_dir')} step "
              f"{pretrained.get('step')} into {storage.absolute(p.out_dir)}"
              + (f" (resuming from step {start})" if start else "") + "\n"
              f"{len(p.train['label'])} train / {len(p.validation['label'])} validation examples, "
              f"{p.train['tokens'].shape[1]} sequence(s) of {p.train['tokens'].shape[2]} tokens each; "
              f"{total} steps of {ft.batch_size} ({p.steps_per_epoch} per epoch), lr {ft.lr:g}, "
              f"λ (lm_weight) {ft.lm_weight:g}, classifier dropout {setup.classifier_dropout:g}; "
              f"mesh {dict(setup.mesh.shape)}")
    train_step = ft_step.make_train_step(setup)
    eval_step = ft_step.make_eval_step(setup)
    task_state = {"step": 0, "task": _plain(p.task.to_dict()), "pretrained": pretrained}
    began = time.perf_counter()
    try:
        with PreemptionWatcher(sync_every=ft.log_every) as watcher:  # SIGTERM: save, then stop
            hooks = finetune_hooks(lambda params: evaluate(p, eval_step, params), out, manager, task_state, cfg,
                                   ft, watcher, total=total, end=end)
            trainer = Trainer(train_step, lambda step: ft_step.to_global(setup, train_batch(p, step)),
                              hooks.all, say=out.print, advance=out.advance)
            state, step = trainer.run(state, start, end)
        ckpt.wait(manager, cfg.checkpoint.keep)
    finally:
        manager.close()
        out.close()
    result: dict[str, Any] = {"start_step": start, "losses": hooks.log.losses, "out_dir": p.out_dir,
                              "total_steps": total, "preempted": hooks.preemption.stopped_at is not None}
    if hooks.validation.latest is not None:
        result["eval"] = hooks.validation.latest
    elif end == total and not result["preempted"]:  # a finished run asked again: report, train nothing
        result["eval"] = evaluate(p, eval_step, state["params"])
    result.update(final_step=step, seconds=time.perf_counter() - began, state=state, setup=setup, prepared=p)
    return result


def _plain(d: Any) -> Any:
    """A dict as JSON stores it (tuples as lists), so a saved task compares equal to a loaded one."""
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d

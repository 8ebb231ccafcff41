"""The train loop: batch -> step -> metrics -> checkpoint -> eval, with exact resume.

Running train() again on a run dir that holds checkpoints continues from the
newest complete one: parameters, optimizer state, step and the data
iterator's position all come back, so the resumed run prints the same losses
the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax

from pretrax import storage
from pretrax.config import Config
from pretrax.data.objectives import denoiser_names
from pretrax.data.pipeline import check_splits, eval_batches, make_train_iterator
from pretrax.data.prefetch import Prefetcher
from pretrax.data.tokenizer import config_tokenizer
from pretrax.errors import ConfigError, DataError
from pretrax.flops import attention_note, step_flops
from pretrax.parallel.mesh import batch_parallelism, make_mesh
from pretrax.perf import device_peak, flop_rates
from pretrax.train import checkpoint as ckpt
from pretrax.train import run_lock, run_record
from pretrax.train.metrics import MetricsWriter
from pretrax.train.nonfinite import MAX_ROLLBACKS, bad_steps, stop_error
from pretrax.train.preemption import PreemptionWatcher
from pretrax.train.state import init_state, make_setup, model_vocab_size, param_count
from pretrax.train.step import batch_keys, make_eval_step, make_train_step, to_global


def check_run_dir(run_dir: str) -> str:
    """A usable run dir (local, or gs:// with a bucket that answers), checked before anything is written."""
    storage.check_reachable(run_dir, "run.dir")
    if storage.isfile(run_dir):
        raise ConfigError(f"run.dir {run_dir!r} is a file; give a directory (new or holding an earlier run)")
    return run_dir


def check_batch(cfg: Config, mesh) -> None:
    ways = batch_parallelism(mesh, dict(cfg.mesh.rules))
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if micro % ways:
        raise ConfigError(
            f"train.batch_size / train.grad_accum = {micro} sequences per micro-batch is not divisible by the "
            f"data-parallel size {ways} (mesh.data * mesh.fsdp, times mesh.dcn_data slices); use a multiple of {ways}"
        )
    if cfg.train.batch_size % jax.process_count():
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by the number of hosts ({jax.process_count()})"
        )


def write_config(cfg: Config, run_dir: str) -> None:
    """RUN_DIR/config.yaml, replaced atomically so a crash never leaves half a file."""
    if jax.process_index() != 0:
        return
    storage.write_text(storage.join(run_dir, "config.yaml"), cfg.to_yaml())


def train(cfg: Config, *, stop_at: int | None = None, progress: bool | None = None,
          batch_hook: Callable[[int, dict], dict] | None = None, allow_data_change: bool = False) -> dict[str, Any]:
    """Train (or resume) the run described by cfg; returns the final numbers.

    batch_hook(step, host_batch) -> host_batch runs on each batch before its step: the seam for
    fault injection (tests put a NaN into a batch there) and for batch surgery.
    allow_data_change: resume even though the data section, seed or batch size differ from the
    checkpoint's (refused otherwise, run_record.py); the change is recorded in the run's history.
    """
    run_dir = check_run_dir(cfg.run.dir)
    eval_config(cfg)  # refuses an eval objective the model kind cannot be scored on
    tokenizer = config_tokenizer(cfg.data)
    if getattr(tokenizer, "ids_only", False):  # an import without a usable tokenizer (pretrax import)
        raise ConfigError("data.tokenizer is none (token ids only), so training cannot read text; set "
                          "data.tokenizer to 'bytes' or a SentencePiece .model whose ids fit model.vocab_size")
    vocab_size = model_vocab_size(cfg, tokenizer.vocab_size)
    if vocab_size < tokenizer.vocab_size:
        ordinary = tokenizer.vocab_size - tokenizer.num_sentinels
        raise ConfigError(
            f"model.vocab_size ({vocab_size}) is smaller than the tokenizer's {tokenizer.vocab_size} ids ({ordinary} "
            f"ordinary + data.num_sentinels={tokenizer.num_sentinels} sentinels); use 0 (automatic) or a larger "
            "value, or fewer data.num_sentinels"
        )
    check_splits(cfg)  # no training or held-out documents: refused now, not at the first eval after training
    mesh = make_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    setup = make_setup(cfg, mesh, vocab_size)
    with run_lock.hold(run_dir, primary=jax.process_index() == 0):  # one trainer per run dir; a second is refused
        return _train(cfg, run_dir, tokenizer, vocab_size, mesh, setup, stop_at, progress, batch_hook,
                      allow_data_change)


def _train(cfg: Config, run_dir: str, tokenizer, vocab_size: int, mesh, setup, stop_at: int | None,
           progress: bool | None, batch_hook: Callable[[int, dict], dict] | None,
           allow_data_change: bool) -> dict[str, Any]:
    """The rest of train(), run while this process holds the run dir's lock (run_lock.py)."""
    # Everything is checked, and the checkpoint read, before anything is written.
    data = make_train_iterator(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    if cfg.data.prefetch:
        data = Prefetcher(data, cfg.data.prefetch)
    # the newest checkpoint that restores; damaged newer ones are skipped (one line on stderr), then set aside
    start, state, data_state, damaged = ckpt.restore_latest_good(run_dir, cfg, setup.abstract_state())
    saved, data_change, position = None, {}, None
    if start is not None:
        saved = ckpt.saved_config(run_dir, start, cfg)
        data_change = run_record.check_data_order(saved, cfg, start, allow=allow_data_change)
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
    n_params = param_count(setup.abstract_params)
    tokens_per_step = cfg.train.batch_size * row_tokens(cfg)
    fpt = step_flops(cfg, vocab_size, setup.abstract_params).per_token  # attention as train.mfu_attention says
    peak = device_peak(cfg.train.peak)  # per-device TFLOP/s for MFU; unknown (no mfu) is said once at start-up
    out.print(startup_summary(cfg, setup, n_params, tokens_per_step, fpt, start))

    train_step = make_train_step(setup)
    evaluate = make_evaluator(cfg, setup, tokenizer)
    result: dict[str, Any] = {"start_step": start, "losses": {}, "skipped_steps": [], "rollbacks": 0}
    last_time, last_step = time.perf_counter(), start
    pending: list[tuple[int, Any]] = []  # metrics stay on device until a log step (no sync every step)
    policy = cfg.train.nan_policy
    step = start
    try:
        with PreemptionWatcher(sync_every=cfg.train.log_every) as preemption:  # SIGTERM: save, then stop
            while step < end:
                step += 1
                batch = next(data) if batch_hook is None else batch_hook(step, next(data))
                state, metrics = train_step(state, to_global(setup, batch))
                pending.append((step, metrics))
                out.advance()
                eval_due = step == total or (cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0)
                log_due = step % cfg.train.log_every == 0 or step == end or eval_due
                save_due = step % cfg.checkpoint.every == 0 or step == end
                preempted = preemption.requested(step)
                bad = bad_steps(pending) if log_due or save_due or preempted else []
                if bad:  # train.nan_policy (nonfinite.py); the weights never took the bad update
                    if policy == "stop" or (policy == "rollback" and result["rollbacks"] >= MAX_ROLLBACKS):
                        why = f", {MAX_ROLLBACKS} rollbacks already" if policy == "rollback" else ""
                        ckpt.wait(manager)
                        raise stop_error(policy, bad, manager.latest_step(), why)
                    if policy == "rollback":
                        ckpt.wait(manager)
                        back = manager.latest_step()
                        if back is None:
                            raise stop_error(policy, bad, None, ", nothing to roll back to")
                        state, _ = ckpt.restore(manager, back, setup.abstract_state())  # the data stream goes on
                        out.print(f"step {bad[0]}: non-finite loss or gradients; rolled back to step {back} and "
                                  f"skipped batches {back + 1}..{step}")
                        result["rollbacks"] += 1
                        pending, step, last_step, last_time = [], back, back, time.perf_counter()
                        continue
                    result["skipped_steps"] += bad
                if log_due:
                    fetched = jax.device_get([m for _, m in pending])
                    now = time.perf_counter()
                    for (s, _), m in zip(pending, fetched):
                        result["losses"][s] = float(m["loss"])
                    row = {k: float(fetched[-1][k]) for k in ("loss", "lr", "grad_norm", "z_loss") if k in fetched[-1]}
                    row.update(denoiser_losses(cfg, fetched[-1]))
                    if result["skipped_steps"]:
                        row["skipped_steps"] = len(result["skipped_steps"])
                    row["tokens_per_s"] = tokens_per_step * (step - last_step) / max(now - last_time, 1e-9)
                    row.update(flop_rates(row["tokens_per_s"] * fpt, jax.device_count(), peak, cfg.train.mfu_attention))
                    if eval_due:
                        result["eval"] = evaluate(state["params"])
                        row.update(result["eval"])
                    out.write(step, row)
                    if eval_due:
                        out.print(f"eval at step {step}: loss {row['eval_loss']:.4f} nats/token, "
                                  f"{row['eval_bits_per_byte']:.4f} bits per byte")
                    pending, last_step = [], step
                    last_time = time.perf_counter()  # eval time is not training time
                if save_due or preempted:
                    ckpt.save(manager, step, state, ckpt.gather_data_state(data), cfg)
                    out.flush()  # the metrics rows up to this checkpoint are stored with it
                    out.print(f"checkpoint step {step}: saving to {manager.directory} (in the background)")
                if preempted:
                    out.print(f"preempted (SIGTERM) after step {step}: checkpoint saved; run the same command to resume")
                    result["preempted"] = True
                    break
        ckpt.wait(manager, cfg.checkpoint.keep)
    finally:
        data.close()  # the prefetch thread and any document worker processes
        manager.close()
        out.close()
    end = step
    if end == total and "eval" not in result:  # resumed a finished run: nothing trained, still report
        result["eval"] = evaluate(state["params"])
    result.update(final_step=end, params=state["params"], setup=setup, tokenizer=tokenizer)
    return result


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


def denoiser_losses(cfg: Config, metrics: dict) -> dict[str, float]:
    """loss_R, loss_S, loss_X, ...: the step's mean loss per denoiser name (repeated names pooled)."""
    if "denoiser_loss" not in metrics:
        return {}
    sums: dict[str, list[float]] = {}
    for name, loss, tokens in zip(denoiser_names(cfg.data), metrics["denoiser_loss"], metrics["denoiser_tokens"]):
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(loss)
        total[1] += float(tokens)
    return {f"loss_{name}": loss / tokens for name, (loss, tokens) in sums.items() if tokens > 0}


def row_tokens(cfg: Config) -> int:
    """Tokens a batch row trains on: seq_len, or for the encoder-decoder its decoder row (targets_len)."""
    if cfg.model.kind == "encoder_decoder":
        return cfg.data.targets_len or cfg.data.seq_len
    return cfg.data.seq_len


def eval_config(cfg: Config) -> Config:
    """The config the held-out batches are built with (train.eval_objective)."""
    if cfg.train.eval_objective == "same":
        return cfg
    if cfg.model.kind == "encoder_decoder":
        raise ConfigError("train.eval_objective=causal_lm needs a decoder-only model; the encoder-decoder is "
                          "scored on its own objective (train.eval_objective: same)")
    # e.g. a UL2 decoder scored as a plain next-token LM
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, objective="causal_lm", denoisers=()))


def make_evaluator(cfg: Config, setup, tokenizer):
    """Held-out loss and bits per byte over a fixed set of batches."""
    eval_cfg = eval_config(cfg)
    keys = batch_keys(eval_cfg, with_denoiser=False)
    eval_step = make_eval_step(setup, jax.numpy.asarray(tokenizer.token_bytes, dtype=jax.numpy.float32), keys)
    batches = None

    def evaluate(params) -> dict[str, float]:
        nonlocal batches
        if batches is None:
            host = eval_batches(eval_cfg, cfg.train.eval_batches, cfg.train.batch_size,
                                process_index=jax.process_index(), process_count=jax.process_count())
            batches = [to_global(setup, b, keys) for b in host]
        sums = jax.device_get([eval_step(params, b) for b in batches])
        loss = sum(float(s["loss_sum"]) for s in sums)
        tokens = sum(float(s["tokens"]) for s in sums)
        nbytes = sum(float(s["bytes"]) for s in sums)
        return {
            "eval_loss": loss / max(tokens, 1.0),
            "eval_bits_per_byte": loss / math.log(2) / max(nbytes, 1.0),
        }

    return evaluate


def startup_summary(cfg: Config, setup, n_params: int, tokens_per_step: int, fpt: float, start: int) -> str:
    mesh = setup.mesh
    ways = batch_parallelism(mesh, dict(cfg.mesh.rules))
    per_device = cfg.train.batch_size / cfg.train.grad_accum / ways
    decayed = setup.param_groups.size(decayed=True)
    lines = [
        f"run dir: {storage.absolute(cfg.run.dir)}" + (f" (resuming from step {start})" if start else ""),
        f"parameters: {n_params:,} ({decayed:,} with weight decay)",
        setup.param_groups.summary(),
        f"mesh: {dict(mesh.shape)} on {mesh.devices.size} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es)",
        f"tokens per step: {tokens_per_step:,} ({cfg.train.batch_size} x {row_tokens(cfg)}"
        + (f" decoder tokens, {cfg.data.inputs_len or cfg.data.seq_len} encoder tokens per row"
           if cfg.model.kind == "encoder_decoder" else "") + "); "
        f"{per_device:g} sequences per device per micro-batch",
        f"FLOPs per token: {fpt:.3g} ({attention_note(cfg.train.mfu_attention)}; train.mfu_attention="
        f"{cfg.train.mfu_attention}); {device_peak(cfg.train.peak).describe()}",
    ]
    return "\n".join(lines)

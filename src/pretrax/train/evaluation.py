"""Held-out evaluation: loss and bits per byte over a fixed set of batches, and the hook that runs it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax

from pretrax.config import Config
from pretrax.data.pipeline import eval_batches
from pretrax.errors import ConfigError
from pretrax.models.family import family_of
from pretrax.train.hooks import HookResult, StepContext
from pretrax.train.step import batch_keys, make_eval_step, to_global


def eval_config(cfg: Config) -> Config:
    """The config the held-out batches are built with (train.eval_objective)."""
    if cfg.train.eval_objective == "same":
        return cfg
    if family_of(cfg.model).has_encoder:
        raise ConfigError("train.eval_objective=causal_lm needs a decoder-only model; the encoder-decoder is "
                          "scored on its own objective (train.eval_objective: same)")
    # e.g. a UL2 decoder scored as a plain next-token LM
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, objective="causal_lm", denoisers=()))


def make_evaluator(cfg: Config, setup, tokenizer) -> Callable[[Any], dict[str, float]]:
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


class Evaluation:
    """The hook: held-out scores every train.eval_every steps and at the last step, into that step's row."""

    due_with = ()

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int, total: int):
        self.evaluate, self.every, self.total = evaluate, every, total
        self.latest: tuple[int, dict[str, float]] | None = None  # (step, scores) of the newest evaluation

    def due(self, step: int) -> bool:
        return step == self.total or (self.every > 0 and step % self.every == 0)

    def run(self, ctx: StepContext) -> HookResult:
        scores = self.evaluate(ctx.state["params"])
        self.latest = (ctx.step, scores)
        return HookResult(metrics=scores, note=f"eval at step {ctx.step}: loss {scores['eval_loss']:.4f} "
                                               f"nats/token, {scores['eval_bits_per_byte']:.4f} bits per byte")

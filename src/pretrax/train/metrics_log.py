"""The metrics-row hook: every train.log_every steps (and whenever a metric hook is due), one row
of what training did since the last row, plus what the step's earlier hooks measured, to
metrics.jsonl, TensorBoard and the progress line (metrics.py writes it)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pretrax.config import Config
from pretrax.data.objectives import denoiser_names
from pretrax.models.family import family_of
from pretrax.perf import flop_rates
from pretrax.train.hooks import Hook, HookResult, StepContext
from pretrax.train.metrics import MetricsWriter

TRAIN_KEYS = ("loss", "lr", "grad_norm", "z_loss")


class MetricsLog:
    """Writes the step's row; keeps every logged step's loss (`losses`) for train()'s result."""

    def __init__(self, cfg: Config, out: MetricsWriter, *, every: int, end: int, tokens_per_step: int,
                 flops_per_token: float, devices: int, peak, due_with: Sequence[Hook] = ()):
        self.cfg, self.out, self.every, self.end = cfg, out, every, end
        self.tokens_per_step, self.flops_per_token, self.devices, self.peak = (
            tokens_per_step, flops_per_token, devices, peak)
        self.due_with = tuple(due_with)  # the metric hooks: their scores need a row
        self.losses: dict[int, float] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.end

    def run(self, ctx: StepContext) -> HookResult:
        window = ctx.window
        for s, m in window.steps:
            self.losses[s] = float(m["loss"])
        last = window.steps[-1][1]
        row = {k: float(last[k]) for k in TRAIN_KEYS if k in last}
        row.update(denoiser_losses(self.cfg, last))
        row.update(expert_metrics(self.cfg, last))
        seconds = max(window.fetched_at - window.opened_at, 1e-9)  # the steps, not the hooks after them
        row["tokens_per_s"] = self.tokens_per_step * (ctx.step - window.start_step) / seconds
        row.update(flop_rates(row["tokens_per_s"] * self.flops_per_token, self.devices, self.peak,
                              self.cfg.train.mfu_attention))
        row.update(ctx.row)  # what the step's earlier hooks returned: skipped steps, evaluations
        self.out.write(ctx.step, row)
        return HookResult(logged=True)


def denoiser_losses(cfg: Config, metrics: dict[str, Any]) -> dict[str, float]:
    """loss_R, loss_S, loss_X, ...: the step's mean loss per denoiser name (repeated names pooled)."""
    if "denoiser_loss" not in metrics:
        return {}
    sums: dict[str, list[float]] = {}
    for name, loss, tokens in zip(denoiser_names(cfg.data), metrics["denoiser_loss"], metrics["denoiser_tokens"]):
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(loss)
        total[1] += float(tokens)
    return {f"loss_{name}": loss / tokens for name, (loss, tokens) in sums.items() if tokens > 0}


def expert_metrics(cfg: Config, metrics: dict[str, Any]) -> dict[str, float]:
    """The MoE layers' step statistics (train/step.py) as scalars: router_loss, the means over layers of
    moe_balance, moe_z and moe_dropped, and per layer (e.g. 'layer3', 'encoder.layer1') moe_dropped/<layer>,
    moe_max_load/<layer> (the busiest expert's share x E: 1 when balanced) and moe_load/<layer>/e<j>."""
    if "moe_load" not in metrics:
        return {}
    names = [name for _, stack in family_of(cfg.model).routed_layer_names(cfg.model) for name in stack]
    load, dropped = np.asarray(metrics["moe_load"]), np.asarray(metrics["moe_dropped"])
    row = {"router_loss": float(metrics["router_loss"])}
    for key in ("balance", "z", "dropped"):
        row[f"moe_{key}"] = float(np.mean(metrics[f"moe_{key}"]))
    for name, shares, drop in zip(names, load, dropped):
        row[f"moe_dropped/{name}"] = float(drop)
        row[f"moe_max_load/{name}"] = float(np.max(shares) * len(shares))
        row.update({f"moe_load/{name}/e{j}": float(x) for j, x in enumerate(shares)})
    return row

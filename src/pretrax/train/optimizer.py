"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask.

Weight decay applies to matrices only: norms and biases (vectors once the
scan-over-layers axis is ignored) are not decayed. The mask is computed from
logical axis names, so it is the same with and without scan_layers.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec as P

from pretrax.config import OptimSection


def learning_rate_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.lr, then cosine/linear decay to lr * min_lr_ratio at total_steps."""
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return decay
    # warmup starts at lr/warmup (not 0) so the very first step already moves the weights
    ramp = optax.linear_schedule(cfg.lr / warmup, cfg.lr, warmup - 1) if warmup > 1 else optax.constant_schedule(cfg.lr)
    return optax.join_schedules([ramp, decay], [warmup])


def decay_mask(logical_specs: Any) -> Any:
    """True for tensors that get weight decay: 2+ axes other than 'layers'."""

    def is_matrix(spec: P) -> bool:
        return sum(1 for name in spec if name != "layers") >= 2

    return jax.tree.map(is_matrix, logical_specs, is_leaf=lambda s: isinstance(s, P))


def make_optimizer(cfg: OptimSection, total_steps: int, logical_specs: Any) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask(logical_specs)
        )
    )
    return optax.chain(*parts)

"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask.

Weight decay applies to matrices only: norms and biases (vectors once the
scan-over-layers axis is ignored) are not decayed. The mask is computed from
logical axis names, so it is the same with and without scan_layers.

Per-parameter learning-rate factors (muP's lr/m for hidden matrices, depth
transfer; models/parametrization.py) scale the Adam direction only: the decay
stays lr * weight_decay, as MuAdamW keeps it. Chaining a per-parameter scale
after optax.adamw would shrink the decay by the same factor.
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
    """True for tensors that get weight decay: 2+ axes other than 'layers', and not a bias.

    (A q/k/v bias has two axes, heads x head_dim, and is still a bias: its name says so.)
    """

    def is_matrix(path, spec: P) -> bool:
        keys = [str(k.key) for k in path if hasattr(k, "key")]  # the path may end in an attribute (.value)
        name = keys[-1] if keys else ""
        return sum(1 for axis in spec if axis != "layers") >= 2 and name != "bias"

    return jax.tree_util.tree_map_with_path(is_matrix, logical_specs, is_leaf=lambda s: isinstance(s, P))


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiply each update by its constant factor (a tree shaped like the parameters)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda f, u: u if f == 1.0 else u * f, factors, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimSection, total_steps: int, logical_specs: Any,
                   lr_multipliers: Any = None) -> optax.GradientTransformation:
    """lr_multipliers: per-parameter factors on the Adam direction (not on the decay); None: plain AdamW."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if lr_multipliers is not None:  # optax.adamw's three steps with the factors after Adam, before the decay
        parts.append(optax.chain(
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=cfg.mu_dtype),
            scale_by_tree(lr_multipliers),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask(logical_specs)),
            optax.scale_by_learning_rate(schedule),
        ))
        return optax.chain(*parts)
    parts.append(
        optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask(logical_specs),
            mu_dtype=cfg.mu_dtype,
        )
    )
    return optax.chain(*parts)

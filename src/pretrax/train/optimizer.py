"""AdamW or Adafactor with warmup + decay, global-norm clipping and a weight-decay mask.

Weight decay applies to matrices only: norms and biases (vectors once the
scan-over-layers axis is ignored) are not decayed. The mask is the
parameter-group table's (models/param_groups.py), read from logical axis names,
so it is the same with and without scan_layers.

Per-parameter learning-rate factors (muP's lr/m for hidden matrices, depth
transfer; models/parametrization.py, one per tensor in models/param_groups.py)
scale the Adam direction only: the decay stays lr * weight_decay, as MuAdamW
keeps it by default (parametrization.scale_weight_decay: true gives the decay the
factor too). Chaining a per-parameter scale after optax.adamw would shrink the
decay by the same factor.

Adafactor (Shazeer & Stern 2018) with the settings T5 and UL2 were trained with
(T5X's adafactor defaults): factored second moments for tensors whose two largest
dims are >= 128, decay rate 0.8 (beta2_t = 1 - t^-0.8), update clipping at RMS 1,
steps relative to each tensor's RMS (floored at 1e-3), no first moment. It is
optax's adafactor with the LR factors and the decoupled decay placed as for
AdamW; under muP the factors differ (parametrization.py, docs/mup.md). Two
layout fixes keep it T5X's: attention kernels are factored as D x (heads *
head_dim), and a scan_layers stack is clipped and scaled per layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from pretrax.config import OptimSection
from pretrax.models.param_groups import param_table


def learning_rate_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.lr, then cosine/linear decay to lr * min_lr_ratio at total_steps.

    rsqrt is T5's (T5X `constant * rsqrt_decay`): lr held for warmup_steps, then lr * sqrt(warmup / step);
    no ramp and no floor, as T5.1.1 and UL2 were trained (lr 1e-2, 10,000 steps).
    """
    if cfg.schedule == "rsqrt":
        hold = max(cfg.warmup_steps, 1)
        return lambda step: cfg.lr * jnp.sqrt(hold / jnp.maximum(step, hold))
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


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiply each update by its constant factor (a tree shaped like the parameters)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda f, u: u if f == 1.0 else u * f, factors, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# T5X's Adafactor (t5x/adafactor.py defaults): decay_rate 0.8, epsilon1 1e-30 (added to squared gradients),
# epsilon2 1e-3 (the floor of a tensor's RMS in the relative step), clipping_threshold 1.0, factoring >= 128.
ADAFACTOR = dict(decay_rate=0.8, epsilon=1e-30, min_scale=1e-3, clipping=1.0, min_dim_size_to_factor=128)


def factoring_shape(shape: tuple[int, ...], spec: P) -> tuple[int, ...]:
    """The shape Adafactor factors a tensor as: heads x head_dim joined into one axis.

    optax factors the two largest axes; an attention kernel (D, N, H) would pair D with
    H (64 < 128, so not factored at all) and keep a full second moment. T5X factors its
    2-D (embed, joined_kv) kernel; joining N and H here does the same.
    """
    out, names = [], []
    for size, name in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if name == "head_dim" and names and names[-1] in ("heads", "kv_heads"):
            out[-1] *= size
        else:
            out.append(size)
            names.append(name)
    return tuple(out)


def reshaped(inner: optax.GradientTransformation, logical_specs: Any) -> optax.GradientTransformation:
    """`inner` applied to every tensor viewed in its factoring_shape; updates come back in the parameter's shape."""

    def view(tree):
        if not jax.tree.leaves(tree):  # optax.tree_map_params's placeholder: no tensors, nothing to reshape
            return tree
        return jax.tree.map(lambda x, spec: x.reshape(factoring_shape(x.shape, spec)), tree, logical_specs)

    def update(updates, state, params=None):
        new, state = inner.update(view(updates), state, None if params is None else view(params))
        return jax.tree.map(lambda n, u: n.reshape(u.shape), new, updates), state

    return optax.GradientTransformation(lambda params: inner.init(view(params)), update)


def _layer_rms(x: jax.Array, spec: P) -> jax.Array:
    """RMS of x, per layer when x is stacked over 'layers' (scan_layers), so a stack is treated as its layers
    are without scan (T5X's Adafactor keeps a scanned axis as a batch axis the same way)."""
    names = tuple(spec) + (None,) * (x.ndim - len(spec))
    axes = tuple(i for i, name in enumerate(names) if name != "layers")
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def clip_by_layer_rms(threshold: float, logical_specs: Any) -> optax.GradientTransformation:
    """optax.clip_by_block_rms, per layer of a stacked tensor: u / max(1, RMS(u) / threshold)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: (u / jnp.maximum(1.0, _layer_rms(u, s) / threshold)).astype(u.dtype),
                            updates, logical_specs), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_param_layer_rms(min_scale: float, logical_specs: Any) -> optax.GradientTransformation:
    """optax.scale_by_param_block_rms, per layer of a stacked tensor: u * max(RMS(param), min_scale)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, p, s: (u * jnp.maximum(_layer_rms(p, s), min_scale)).astype(u.dtype),
                            updates, params, logical_specs), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adafactor_direction(logical_specs: Any) -> optax.GradientTransformation:
    """Adafactor's step before the learning rate: g / sqrt(factored v), clipped to RMS <= 1, times RMS(param)."""
    a = ADAFACTOR
    return optax.chain(
        reshaped(optax.scale_by_factored_rms(decay_rate=a["decay_rate"], epsilon=a["epsilon"],
                                             min_dim_size_to_factor=a["min_dim_size_to_factor"]), logical_specs),
        clip_by_layer_rms(a["clipping"], logical_specs),
        scale_by_param_layer_rms(a["min_scale"], logical_specs),
    )


def make_optimizer(cfg: OptimSection, total_steps: int, logical_specs: Any,
                   lr_multipliers: Any = None, decay_mask: Any = None,
                   scale_decay: bool = False) -> optax.GradientTransformation:
    """lr_multipliers: per-parameter factors on the Adam (or Adafactor) direction, and on the decay too when
    scale_decay (parametrization.scale_weight_decay); None: plain AdamW (or Adafactor). decay_mask: which
    tensors are decayed; None: the parameter-group table's (models/param_groups.py) for logical_specs.
    make_setup passes both from its table."""
    if decay_mask is None:
        decay_mask = param_table(logical_specs).decay_mask()
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "adafactor":  # direction -> x factor -> + wd * param -> x -lr(t), as for AdamW below
        parts += [adafactor_direction(logical_specs),
                  *_factors_and_decay(cfg, lr_multipliers, decay_mask, scale_decay),
                  optax.scale_by_learning_rate(schedule)]
        return optax.chain(*parts)
    if lr_multipliers is not None:  # optax.adamw's three steps with the factors after Adam, before the decay
        parts.append(optax.chain(
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=cfg.mu_dtype),
            *_factors_and_decay(cfg, lr_multipliers, decay_mask, scale_decay),
            optax.scale_by_learning_rate(schedule),
        ))
        return optax.chain(*parts)
    parts.append(
        optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask,
            mu_dtype=cfg.mu_dtype,
        )
    )
    return optax.chain(*parts)


def _factors_and_decay(cfg: OptimSection, lr_multipliers: Any, decay_mask: Any,
                       scale_decay: bool) -> list[optax.GradientTransformation]:
    """x factor then + wd * param (the decay stays lr * wd), or the other way round when scale_decay
    (lr * factor * wd); no decay step at all when weight_decay is 0, no factor step without factors."""
    factors = scale_by_tree(lr_multipliers) if lr_multipliers is not None else optax.identity()
    decay = optax.add_decayed_weights(cfg.weight_decay, decay_mask) if cfg.weight_decay else optax.identity()
    return [decay, factors] if scale_decay else [factors, decay]


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt: Any, abstract_params: Any,
                        param_shardings: Any, replicated: Any) -> Any:
    """Optimizer state laid out like its parameters: a moment shaped like its parameter takes the parameter's
    sharding; Adafactor's row/column statistics (the parameter's shape less one axis) take it less that axis;
    anything else (counters, Adafactor's (1,) placeholders) is replicated."""

    def like(leaf, param, sharding):
        if leaf.shape == param.shape:
            return sharding
        spec = tuple(sharding.spec) + (None,) * (len(param.shape) - len(sharding.spec))
        for axis in range(len(param.shape)):
            if param.shape[:axis] + param.shape[axis + 1:] == leaf.shape:
                return jax.sharding.NamedSharding(sharding.mesh, P(*spec[:axis], *spec[axis + 1:]))
        return replicated

    return optax.tree_map_params(tx, like, abstract_opt, abstract_params, param_shardings,
                                 transform_non_params=lambda _: replicated)

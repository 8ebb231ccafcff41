"""The jitted train and eval steps.

The loss is the mean cross-entropy over target tokens of the whole global
batch (sum over tokens / number of tokens), so gradient accumulation over
micro-batches gives the same update as one big batch.

train.z_loss adds z_loss * log(Z)^2 per target token (Z the softmax's normaliser), as
T5X's cross_entropy_with_logits does, to keep the logits from drifting; the logged
`loss` stays the plain cross-entropy (comparable with eval and across settings) and
`z_loss` is logged next to it. Dropout (model.dropout) takes a key derived from the
run's seed and the step, so a resumed run draws the same masks. MoE layers (model.moe) add their
router losses (load balance, router z-loss) once per target token in the same way; `router_loss` and
the per-layer expert statistics (`moe_load`, `moe_dropped`, `moe_balance`, `moe_z`) are logged.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrax.data.objectives import denoiser_names
from pretrax.models.block_map import block_map
from pretrax.models.family import family_of
from pretrax.parallel.activations import sharding_context
from pretrax.parallel.rules import batch_sharding
from pretrax.train.optimizer import learning_rate_schedule
from pretrax.train.state import TrainSetup

def batch_keys(cfg, *, with_denoiser: bool = True) -> tuple[str, ...]:
    """The batch arrays the step reads (the model family's); denoising objectives add each token's denoiser index."""
    keys = family_of(cfg.model).batch_keys
    return keys + (("denoiser",) if with_denoiser and cfg.data.objective != "causal_lm" else ())


def logits_of(model: Any, batch: dict, dropout_key: jax.Array | None = None, with_aux: bool = False):
    """The model's float32 logits (B, T, V) for a packed batch, as its family reads one (dropout off without a key);
    with_aux: (logits, the MoE layers' statistics by stack)."""
    return family_of(model.cfg).logits(model, batch, dropout_key, with_aux=with_aux)


def token_losses(graphdef: Any, params: Any, batch: dict, chunk: int = 0, with_aux: bool = False):
    """Cross-entropy in nats for every (B, T) position (not yet masked); with_aux: (losses, MoE statistics).

    chunk (train.loss_chunk): the float32 logits (B, chunk, V) of one block of positions at a time, each block
    rematerialised in the backward pass, where the family can split its hidden states from its readout and
    chunk divides T: the same numbers, without the whole (B, T, V) logits and their gradient (7.8 GiB each
    per v5p chip for Llama-3-8B at 4 x 4096 tokens).
    """
    model = nnx.merge(graphdef, params)
    T = batch["targets"].shape[1]
    split = family_of(model.cfg).hidden_and_readout(model, batch) if chunk and T > chunk and T % chunk == 0 else None
    if split is None:
        logits, aux = logits_of(model, batch, with_aux=True)  # (B, T, V) float32
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return (losses, aux) if with_aux else losses
    h, readout, aux = split  # (B, T, D)
    B, n = h.shape[0], T // chunk
    blocks = lambda x: x.reshape((B, n, chunk) + x.shape[2:]).swapaxes(0, 1)  # noqa: E731  (n, B, chunk, ...)

    def one(h_and_targets):
        hc, tc = h_and_targets
        return optax.softmax_cross_entropy_with_integer_labels(readout(hc), tc)  # (B, chunk)

    losses = block_map(jax.checkpoint(one), (blocks(h), blocks(batch["targets"])))  # (n, B, chunk)
    losses = losses.swapaxes(0, 1).reshape(B, T)
    return (losses, aux) if with_aux else losses


def router_losses(moe: Any, aux: dict) -> jax.Array:
    """The MoE layers' auxiliary loss (moe: model.moe): sum over layers of load_balance_loss x balance +
    router_z_loss x z."""
    return sum(moe.load_balance_loss * jnp.sum(s["balance"]) + moe.router_z_loss * jnp.sum(s["z"])
               for s in aux.values())


def router_stats(aux: dict, count: jax.Array) -> dict:
    """The MoE statistics as step metrics, weighted by the batch's target tokens (summed over micro-batches, then
    divided by the total: train step): per layer, stacks in family order, 'moe_load' (layers, E)."""
    stacked = {k: jnp.concatenate([s[k].reshape((-1,) + s[k].shape[1:]) for s in aux.values()])
               for k in ("load", "dropped", "balance", "z")}
    return {f"moe_{k}": v * count for k, v in stacked.items()}


def z_loss_terms(logits: jax.Array, z_loss: float) -> jax.Array:
    """z_loss * log(Z)^2 per position, log Z = logsumexp of the logits (T5X cross_entropy_with_logits).

    Its gradient in the logits is 2 z_loss log(Z) softmax(logits), which pulls log Z towards 0.
    """
    return z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))


def dropout_key(setup: TrainSetup, state: dict) -> jax.Array | None:
    """This step's dropout key: the run's key (from run.seed) folded with the step; None when dropout is off."""
    if setup.cfg.model.dropout == 0:
        return None
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def _summed_loss(graphdef, params, batch, num_denoisers: int, z_loss: float = 0.0, key=None, loss_chunk: int = 0,
                 moe=None):
    """Summed masked loss, and the token counts (and per-denoiser sums for UL2-style objectives).

    With z_loss > 0 the loss differentiated is cross-entropy + z-loss; stats keep the cross-entropy
    and the z-loss sums apart. MoE layers (moe: model.moe) add their router losses the same way.
    """
    mask = batch["loss_mask"]
    if z_loss == 0 and key is None:  # the default program, exactly as before z-loss and dropout existed
        losses, aux = token_losses(graphdef, params, batch, loss_chunk, with_aux=True)
        losses = losses * mask  # (B, T)
    else:
        logits, aux = logits_of(nnx.merge(graphdef, params), batch, key, with_aux=True)  # (B, T, V) float32
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * mask
    stats = {"count": jnp.sum(mask)}
    if num_denoisers:
        which = jax.nn.one_hot(batch["denoiser"], num_denoisers, dtype=losses.dtype)  # (B, T, K)
        stats["denoiser_loss"] = jnp.einsum("BT,BTK->K", losses, which)
        stats["denoiser_tokens"] = jnp.einsum("BT,BTK->K", mask, which)
    if z_loss == 0 and not aux:
        return jnp.sum(losses), stats
    # what the loss adds to the cross-entropy, summed over tokens as the cross-entropy is
    total = stats["cross_entropy"] = jnp.sum(losses)
    if z_loss:
        stats["z_loss"] = jnp.sum(z_loss_terms(logits, z_loss) * mask)
        total = total + stats["z_loss"]
    if aux:  # MoE layers: their balance and router z-losses, once per target token of the batch
        stats.update(router_stats(aux, stats["count"]))
        stats["router_loss"] = router_losses(moe, aux) * stats["count"]
        total = total + stats["router_loss"]
    return total, stats


def _grads(setup: TrainSetup, params: Any, batch: dict, key=None) -> tuple[jax.Array, dict, Any]:
    """Summed loss, token counts and summed gradients, accumulated over micro-batches (key: dropout's, or None)."""
    k = len(denoiser_names(setup.cfg.data)) if "denoiser" in batch else 0
    z = setup.cfg.train.z_loss
    chunk = setup.cfg.train.loss_chunk
    moe = setup.cfg.model.moe
    grad_fn = jax.value_and_grad(lambda p, b, key: _summed_loss(setup.graphdef, p, b, k, z, key, chunk, moe),
                                 has_aux=True)
    accum = setup.cfg.train.grad_accum
    if accum == 1:
        (loss_sum, stats), grads = grad_fn(params, batch, key)
        return loss_sum, stats, grads

    def split(x):  # (B, ...) -> (A, B/A, ...): micro-batch i takes rows i, i+A, ... so each stays sharded
        return x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)

    def body(carry, micro_and_key):
        (l, st), g = grad_fn(params, *micro_and_key)
        return jax.tree.map(jnp.add, carry, (l, st, g)), None

    micro = jax.tree.map(split, batch)
    keys = None if key is None else jax.random.split(key, accum)  # each micro-batch draws its own dropout masks
    first = jax.tree.map(lambda x: x[0], (micro, keys))
    (loss_shape, stats_shape), grads_shape = jax.eval_shape(grad_fn, params, *first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, stats_shape, grads_shape))
    (loss_sum, stats, grads), _ = jax.lax.scan(body, zeros, (micro, keys))
    return loss_sum, stats, grads


def make_train_step(setup: TrainSetup) -> Callable[[dict, dict], tuple[dict, dict]]:
    """One jax.jit: loss + grads + AdamW update, explicit shardings, state donated."""
    lr_at = learning_rate_schedule(setup.cfg.optim, setup.cfg.train.steps)

    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        loss_sum, stats, grads = _grads(setup, state["params"], batch, dropout_key(setup, state))
        count = jnp.maximum(stats.pop("count"), 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = setup.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient never reaches the weights or the Adam moments: the step keeps the
        # old ones (XLA fuses the select into the update) and says so; train.nan_policy decides the rest.
        finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params, opt_state = jax.tree.map(keep, params, state["params"]), jax.tree.map(keep, opt_state, state["opt_state"])
        if "cross_entropy" in stats:  # the objective was cross-entropy + z-loss and/or router losses: log apart
            loss_sum = stats.pop("cross_entropy")
        for k in [k for k in stats if k == "z_loss" or k == "router_loss" or k.startswith("moe_")]:
            stats[k] = stats[k] / count  # per target token
        metrics = {
            "loss": loss_sum / count,
            "grad_norm": grad_norm,
            "lr": lr_at(state["step"]),
            "tokens": count,
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            **stats,  # per-denoiser loss sums and token counts, when the objective has denoisers
        }
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}
        return new_state, metrics

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(
        _with_activation_sharding(setup, step),
        in_shardings=(setup.state_shardings, batch_shardings(setup)),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(setup: TrainSetup, token_bytes: jax.Array, eval_keys: tuple[str, ...]) -> Callable[[Any, dict], dict]:
    """Summed loss (nats), target tokens and target bytes of one held-out batch (arrays ``eval_keys``)."""

    def eval_step(params: Any, batch: dict) -> dict:
        mask = batch["loss_mask"]
        losses = token_losses(setup.graphdef, params, batch)
        return {
            "loss_sum": jnp.sum(losses * mask),
            "tokens": jnp.sum(mask),
            "bytes": jnp.sum(jnp.take(token_bytes, batch["targets"]) * mask),
        }

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(
        _with_activation_sharding(setup, eval_step),
        in_shardings=(setup.state_shardings["params"], batch_shardings(setup, eval_keys)),
        out_shardings=replicated,
    )


def _with_activation_sharding(setup: TrainSetup, fn: Callable) -> Callable:
    """fn traced with the model's activations laid out by mesh.rules (parallel/activations.py)."""

    def traced(*args):
        with sharding_context(setup.mesh, setup.cfg.mesh.rules):
            return fn(*args)

    return traced


def batch_shardings(setup: TrainSetup, keys: tuple[str, ...] | None = None) -> dict:
    sharding = batch_sharding(setup.mesh, dict(setup.cfg.mesh.rules))
    return {k: sharding for k in (keys or batch_keys(setup.cfg))}


def to_global(setup: TrainSetup, host_batch: dict, keys: tuple[str, ...] | None = None) -> dict:
    """Host-local numpy rows -> one global jax.Array per key (works for 1 host or many)."""
    shardings = batch_shardings(setup, keys)
    return {k: jax.make_array_from_process_local_data(sharding, host_batch[k]) for k, sharding in shardings.items()}

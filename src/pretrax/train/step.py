"""The jitted train and eval steps.

The loss is the mean cross-entropy over target tokens of the whole global
batch (sum over tokens / number of tokens), so gradient accumulation over
micro-batches gives the same update as one big batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrax.parallel.rules import batch_sharding
from pretrax.train.optimizer import learning_rate_schedule
from pretrax.train.state import TrainSetup

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "bidirectional")


def token_losses(graphdef: Any, params: Any, batch: dict) -> jax.Array:
    """Cross-entropy in nats for every (B, T) position (not yet masked)."""
    model = nnx.merge(graphdef, params)
    logits = model(
        batch["inputs"],
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        bidirectional=batch["bidirectional"],
    )  # (B, T, V) float32
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])


def _summed_loss(graphdef, params, batch):
    mask = batch["loss_mask"]
    return jnp.sum(token_losses(graphdef, params, batch) * mask), jnp.sum(mask)


def _grads(setup: TrainSetup, params: Any, batch: dict) -> tuple[jax.Array, jax.Array, Any]:
    """Summed loss, token count and summed gradients, accumulated over micro-batches."""
    grad_fn = jax.value_and_grad(lambda p, b: _summed_loss(setup.graphdef, p, b), has_aux=True)
    accum = setup.cfg.train.grad_accum
    if accum == 1:
        (loss_sum, count), grads = grad_fn(params, batch)
        return loss_sum, count, grads

    def split(x):  # (B, ...) -> (A, B/A, ...): micro-batch i takes rows i, i+A, ... so each stays sharded
        return x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)

    def body(carry, micro):
        loss_sum, count, grads = carry
        (l, c), g = grad_fn(params, micro)
        return (loss_sum + l, count + c, jax.tree.map(jnp.add, grads, g)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, count, grads), _ = jax.lax.scan(body, (0.0, 0.0, zeros), jax.tree.map(split, batch))
    return loss_sum, count, grads


def make_train_step(setup: TrainSetup) -> Callable[[dict, dict], tuple[dict, dict]]:
    """One jax.jit: loss + grads + AdamW update, explicit shardings, state donated."""
    lr_at = learning_rate_schedule(setup.cfg.optim, setup.cfg.train.steps)

    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        loss_sum, count, grads = _grads(setup, state["params"], batch)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = setup.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss_sum / count,
            "grad_norm": optax.tree.norm(grads),
            "lr": lr_at(state["step"]),
            "tokens": count,
        }
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}
        return new_state, metrics

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(
        step,
        in_shardings=(setup.state_shardings, batch_shardings(setup)),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(setup: TrainSetup, token_bytes: jax.Array) -> Callable[[Any, dict], dict]:
    """Summed loss (nats), target tokens and target bytes of one held-out batch."""

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
        eval_step,
        in_shardings=(setup.state_shardings["params"], batch_shardings(setup)),
        out_shardings=replicated,
    )


def batch_shardings(setup: TrainSetup) -> dict:
    sharding = batch_sharding(setup.mesh, dict(setup.cfg.mesh.rules))
    return {k: sharding for k in BATCH_KEYS}


def to_global(setup: TrainSetup, host_batch: dict) -> dict:
    """Host-local numpy rows -> one global jax.Array per key (works for 1 host or many)."""
    shardings = batch_shardings(setup)
    return {k: jax.make_array_from_process_local_data(shardings[k], host_batch[k]) for k in BATCH_KEYS}

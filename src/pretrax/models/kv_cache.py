"""The KV cache of the decoding path: every layer's keys and values, preallocated.

A cache is a plain dict of arrays (a pytree), so a jitted decoding step takes it in and
gives it back with the new positions written. Its shapes never change while decoding,
so the step compiles once. Layers are stacked on a leading (L,) axis, as with
scan_layers, whether or not the model scans.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.config import ModelSection


def empty(cfg: ModelSection, n_layers: int, batch: int, length: int) -> dict:
    """Zeroed keys and values {"k", "v"}: (L, B, S, K, H) in the compute dtype; K heads, not N (GQA)."""
    shape = (n_layers, batch, length, cfg.kv_heads, cfg.head_size)
    return {"k": jnp.zeros(shape, jnp.dtype(cfg.dtype)), "v": jnp.zeros(shape, jnp.dtype(cfg.dtype))}


def slot_mask(start: jax.Array, length: int, slots: int, prefix: jax.Array | int = 0) -> jax.Array:
    """(1, T, S) bool: may the query at position start + t read cache slot s (= position s)?

    Causal (s <= start + t), except that the first `prefix` positions (a prefix-LM prompt,
    filled in one pass) all see each other, as the training mask lets them. Slots past the
    query are never read, so whatever they hold (zeros, padding of the prefill) is harmless.
    """
    q = start + jnp.arange(length)[:, None]  # (T, 1)
    s = jnp.arange(slots)[None, :]  # (1, S)
    return ((s <= q) | ((q < prefix) & (s < prefix)))[None]


def within_window(mask: jax.Array, start: jax.Array, window: int) -> jax.Array:
    """A slot mask (1, T, S) narrowed to a sliding window: |start + t - s| < window (0: unchanged)."""
    if not window:
        return mask
    T, S = mask.shape[1:]
    q = start + jnp.arange(T)[:, None]
    return mask & (jnp.abs(q - jnp.arange(S)[None, :]) < window)[None]


def _decode_block(block, x: jax.Array, cache, *args):
    return block.decode(x, cache, *args)


def run_layers(blocks, scanned: bool, x: jax.Array, cache, *args, group: int = 1) -> tuple[jax.Array, dict]:
    """x through every block's `decode(x, layer_cache, *args) -> (x, layer_cache)`; returns (x, the new cache).

    cache: a pytree whose arrays have a leading (L,) axis; layer i reads and writes slice i. group > 1: the
    units are layer_stack.LayerGroups of `group` layers, each reading its layers' slices as one (group, ...).
    """
    if group > 1:
        regroup = lambda a: a.reshape((a.shape[0] // group, group) + a.shape[1:])  # noqa: E731
        x, cache = run_layers(blocks, scanned, x, jax.tree.map(regroup, cache), *args)
        return x, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), cache)
    if scanned:  # the blocks' weights are stacked too: one scanned body
        run: Callable = nnx.scan(_decode_block, in_axes=(0, nnx.Carry, 0) + (None,) * len(args),
                                 out_axes=(nnx.Carry, 0), transform_metadata={nnx.PARTITION_NAME: "layers"})
        return run(blocks, x, cache, *args)
    layers = []
    for i, block in enumerate(blocks):
        x, layer = _decode_block(block, x, jax.tree.map(lambda a: a[i], cache), *args)
        layers.append(layer)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *layers)

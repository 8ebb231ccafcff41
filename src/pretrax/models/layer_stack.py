"""One way to build and run a stack of identical layers, shared by every model family.

`make_layers` builds n blocks: with model.scan_layers one block whose weights carry a leading
(L,) axis named 'layers' (built at once by nnx.vmap over split rngs), otherwise a list. `run_layers`
sends x through them: rematerialised as model.remat says, then nnx.scan over the stacked weights
or a Python loop over the list, with one dropout key per layer sliced the same way in both, so the
two layouts compute the same numbers. (The KV-cache decoding path is kv_cache.run_layers.)

Layers of two kinds (dense and routed: model.moe.every; local and global attention: model.global_every;
models/layer_kinds.py) are scanned as groups: a
`LayerGroup` of k consecutive layers is the unit that is stacked and scanned (L/k times), as the
layer is otherwise. A block returns (x, statistics); the statistics of every unit (an MoE layer's
expert load, empty for dense blocks) come back stacked on a leading (units,) axis.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.models.layers import RESIDUAL
from pretrax.parallel.activations import constrain

# What the backward pass may keep from each layer's forward pass instead of recomputing it.
REMAT_POLICIES = {
    # keep only the layer's input; recompute the whole layer (least memory)
    "full": None,
    # keep the weight matmuls' outputs (O(T*D) per token); recompute the attention
    # scores and probabilities (batched matmuls, O(T^2)) and elementwise ops
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # keep only each attention's output (B, T, N, H; named in attention.py); recompute the rest
    "attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class LayerGroup(nnx.Module):
    """`size` consecutive layers run as one unit (what is stacked and scanned when layer kinds alternate)."""

    def __init__(self, layers: list):
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array, *args) -> tuple[jax.Array, dict]:
        """args: the blocks' inputs, then the members' dropout keys (size,) or None."""
        *args, keys = args
        stats: dict = {}
        for i, layer in enumerate(self.layers):
            x, s = layer(x, *args, *(() if keys is None else (keys[i],)))
            stats.update(s)  # one routed member per group: its statistics are the group's
        return x, stats

    def decode(self, x: jax.Array, cache, *args):
        """The members' decoding paths; cache arrays carry a leading (size,) axis, member i's slice i."""
        layers = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer.decode(x, jax.tree.map(lambda a: a[i], cache), *args)
            layers.append(layer_cache)
        return x, stack(layers)


def stack(trees: list):
    """Trees of arrays stacked leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def make_layers(create: Callable[[nnx.Rngs, int], nnx.Module], n_layers: int, *, scan: bool, rngs: nnx.Rngs,
                group: int = 1):
    """n_layers blocks from create(rngs, i), i the block's place in its group of `group` (0 when 1): one
    stacked unit (scan) or an nnx.List of units (a unit: a block, or a LayerGroup), drawn from rngs in order."""

    def unit(r: nnx.Rngs):
        return create(r, 0) if group == 1 else LayerGroup([create(r, i) for i in range(group)])

    if scan:
        @nnx.split_rngs(splits=n_layers // group)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked(rngs: nnx.Rngs):
            return unit(rngs)

        return stacked(rngs)
    return nnx.List([unit(rngs) for _ in range(n_layers // group)])


def _call_block(block, x: jax.Array, *args) -> tuple[jax.Array, dict]:
    x, stats = block(x, *args)
    return constrain(x, RESIDUAL), stats


def run_layers(blocks, x: jax.Array, args: tuple, *, n_layers: int, scan: bool, remat: str,
               dropout_key: jax.Array | None = None, group: int = 1) -> tuple[jax.Array, dict]:
    """x through every unit(x, *args[, keys]) -> (x, stats): args are the same for every layer; without a
    dropout key nothing is split or traced for it. Returns (x, every unit's stats stacked: (units, ...))."""
    keys = None if dropout_key is None else jax.random.split(dropout_key, n_layers)
    if group > 1:  # a group takes its members' keys together, or None
        keys = (None if keys is None else keys.reshape(n_layers // group, group),)
    else:
        keys = () if keys is None else (keys,)
    run = _call_block
    if remat != "none":
        # inside scan, CSE across iterations cannot happen, so its prevention only costs speed
        run = nnx.remat(run, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if scan:
        # one compiled unit body, applied L / group times; weights (and keys) are sliced along axis 0 ('layers')
        key_axes = tuple(None if k is None else 0 for k in keys)
        run = nnx.scan(run, in_axes=(0, nnx.Carry) + (None,) * len(args) + key_axes, out_axes=(nnx.Carry, 0),
                       transform_metadata={nnx.PARTITION_NAME: "layers"})
        return run(blocks, x, *args, *keys)
    stats = []
    for i, block in enumerate(blocks):
        x, s = run(block, x, *args, *(None if k is None else k[i] for k in keys))
        stats.append(s)
    return x, stack(stats) if stats and stats[0] else {}

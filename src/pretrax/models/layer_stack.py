"""One way to build and run a stack of identical layers, shared by every model family.

`make_layers` builds n blocks: with model.scan_layers one block whose weights carry a leading
(L,) axis named 'layers' (built at once by nnx.vmap over split rngs), otherwise a list. `run_layers`
sends x through them: rematerialised as model.remat says, then nnx.scan over the stacked weights
or a Python loop over the list, with one dropout key per layer sliced the same way in both, so the
two layouts compute the same numbers. (The KV-cache decoding path is kv_cache.run_layers.)
"""

from __future__ import annotations

from typing import Callable

import jax
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


def make_layers(create: Callable[[nnx.Rngs], nnx.Module], n_layers: int, *, scan: bool, rngs: nnx.Rngs):
    """n_layers blocks from create(rngs): one stacked block (scan) or an nnx.List, drawn from rngs in order."""
    if scan:
        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked(rngs: nnx.Rngs):
            return create(rngs)

        return stacked(rngs)
    return nnx.List([create(rngs) for _ in range(n_layers)])


def _call_block(block, x: jax.Array, *args) -> jax.Array:
    return constrain(block(x, *args), RESIDUAL)


def run_layers(blocks, x: jax.Array, args: tuple, *, n_layers: int, scan: bool, remat: str,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """x through every block(x, *args[, key]): args are the same for every layer; without a dropout key
    nothing is split or traced for it."""
    keys = () if dropout_key is None else (jax.random.split(dropout_key, n_layers),)
    run = _call_block
    if remat != "none":
        # inside scan, CSE across iterations cannot happen, so its prevention only costs speed
        run = nnx.remat(run, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if scan:
        # one compiled layer body, applied L times; weights (and keys) are sliced along axis 0 ('layers')
        run = nnx.scan(run, in_axes=(0, nnx.Carry) + (None,) * len(args) + (0,) * len(keys), out_axes=nnx.Carry,
                       transform_metadata={nnx.PARTITION_NAME: "layers"})
        return run(blocks, x, *args, *keys)
    for i, block in enumerate(blocks):
        x = run(block, x, *args, *(k[i] for k in keys))
    return x

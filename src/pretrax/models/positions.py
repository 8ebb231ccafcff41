"""Position information: a learned table added to the embeddings (GPT-1), or
rotary embeddings applied to queries and keys (RoPE, Su et al. 2021).

Both take explicit positions (B, T), so a packed row restarts positions at every
document and each document sees the positions it would see alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.models.layers import param


class LearnedPositions(nnx.Module):
    """One learned vector per position, added to the token embedding."""

    def __init__(self, max_seq_len: int, dim: int, *, std: float, param_dtype, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.table = param(rngs, nnx.initializers.normal(std), (max_seq_len, dim), ("length", "embed"), param_dtype)

    def __call__(self, positions: jax.Array) -> jax.Array:
        return jnp.take(self.table[...], positions, axis=0).astype(self.dtype)  # (B, T, D)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of the rotation angles, each (B, T, 1, H/2) float32.

    Pair i turns at frequency theta^(-2i/H): fast pairs resolve nearby positions,
    slow ones far-away positions. Computed once per batch and shared by all layers.
    """
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # (H/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, H/2)
    return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # (B, T, 1, H/2): broadcast over heads


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate pairs (x[i], x[i + H/2]) of every head by their angle; x: (B, T, N, H).

    The two halves of H form the pairs (the GPT-NeoX / LLaMA layout), so the
    rotation is two elementwise products instead of an interleaving gather.
    The angles are float32 (bf16 positions * frequencies would be off by whole
    radians at long positions), so the rotation is done in float32 too.
    """
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, N, H/2) each
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)

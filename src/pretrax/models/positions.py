"""Position information: a learned table added to the embeddings (GPT-1), rotary
embeddings applied to queries and keys (RoPE, Su et al. 2021), RoPE with xPos's
exponential decay (Sun et al. 2022), or ALiBi's linear bias on the attention scores
(Press et al. 2022).

All take explicit positions (B, T), so a packed row restarts positions at every
document and each document sees the positions it would see alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.models.layers import param
from pretrax.models.score_bias import ScoreBias


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


def alibi_slopes(n_heads: int) -> jax.Array:
    """ALiBi's per-head slopes m_h (float32, (N,)): the geometric sequence 2^(-8h/N), h = 1..N, for N a power
    of two; otherwise those of the largest power of two below N, then every other slope of twice that
    (the paper's code, ofirpress/attention_with_linear_biases)."""
    def powers(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    low = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(low) if low == n_heads else powers(low) + powers(2 * low)[0::2][: n_heads - low]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(q_positions: jax.Array, k_positions: jax.Array, slopes: jax.Array) -> jax.Array:
    """-m_h |i - j| for query position i, key position j: float32 (B, N, T, S) from positions (B, T), (B, S).

    Causal attention only ever sees j <= i, where this is the paper's -m (i - j); written with |i - j| it is
    also the bias of a bidirectional span (an encoder, a prefix-LM prefix), as the paper's encoder variants use.
    """
    distance = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)  # (B, T, S)
    return -slopes[None, :, None, None] * distance[:, None]


def alibi(q_positions: jax.Array, k_positions: jax.Array, n_heads: int) -> ScoreBias:
    """ALiBi's bias of query positions (B, T) against key positions (B, S), unevaluated (alibi_bias)."""
    return ScoreBias(q_positions, k_positions, alibi_slopes(n_heads), alibi_bias)


XPOS_GAMMA = 0.4  # xPos's gamma: pair i decays by zeta_i = (2i / H + gamma) / (1 + gamma) per scale_base positions


def xpos_angles(positions: jax.Array, head_dim: int, theta: float, scale_base: float) -> tuple[jax.Array, ...]:
    """RoPE's (sin, cos) and xPos's scales (B, T, 1, H/2): queries x zeta^(n / scale_base), keys x
    zeta^(-n / scale_base), so the score of positions n and m carries zeta^((n - m) / scale_base): a decay with
    distance, strongest for the fast-turning pairs. In float32 the key scale overflows past about 2^16
    positions within one document (zeta_0 = 0.4 / 1.4)."""
    sin, cos = rope_angles(positions, head_dim, theta)
    zeta = (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim + XPOS_GAMMA) / (1 + XPOS_GAMMA)  # (H/2,)
    power = positions.astype(jnp.float32)[..., None] / scale_base  # (B, T, 1)
    up = (zeta ** power)[:, :, None, :]  # (B, T, 1, H/2)
    return sin, cos, up, 1.0 / up


def rotate_qk(q: jax.Array, k: jax.Array, angles: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    """RoPE (angles = (sin, cos)) or xPos (angles = (sin, cos, query scale, key scale)) applied to q and k."""
    q, k = apply_rope(q, *angles[:2]), apply_rope(k, *angles[:2])
    if len(angles) == 4:
        up, down = (jnp.concatenate([s, s], axis=-1) for s in angles[2:])  # both members of a pair
        q, k = (q.astype(jnp.float32) * up).astype(q.dtype), (k.astype(jnp.float32) * down).astype(k.dtype)
    return q, k

"""Multi-head (and grouped-query) self-attention with packed-sequence masks.

Besides the axis legend (pretrax/__init__.py) this file uses G = N // K, the
number of query heads that share one key/value head in grouped-query attention
(Ainslie et al., 2023); with K == N it is ordinary multi-head attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from pretrax.config import ModelSection
from pretrax.models.layers import Einsum
from pretrax.models.parametrization import STANDARD, Parametrization
from pretrax.models.positions import apply_rope


def attention_mask(segment_ids: jax.Array, bidirectional: jax.Array | None = None) -> jax.Array:
    """(B, T, S) bool: may query t attend to key s?

    Only within one document (same segment id), and only to earlier-or-same
    positions, except that the prefix of a prefix-LM document (bidirectional == 1)
    sees all of itself. Every query may attend to itself, so no row is empty and
    softmax never divides by zero, padding (segment 0) included.
    """
    T = segment_ids.shape[1]
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, S)
    allowed = jnp.tril(jnp.ones((T, T), dtype=bool))[None]  # (1, T, S): causal
    if bidirectional is not None:
        prefix = bidirectional.astype(bool)
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])  # (B, T, S)
    return same_doc & allowed


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                          bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """softmax(q k^T * scale + bias) v over the allowed (query, key) pairs.

    q: (B, T, N, H); k, v: (B, S, K, H); mask: (B, T, S) bool; bias: optional float
    (B or 1, N, T, S), added to the scaled scores (the T5 relative position bias);
    scale: default 1/sqrt(H) (muP passes sqrt(base H) / H, models/parametrization.py).
    Returns (B, T, N, H). Query head n reads kv head n // G. Scores and softmax are float32.
    """
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)  # (B, T, K, G, H): group query heads by their kv head
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * (H**-0.5 if scale is None else scale)
    if bias is not None:  # (B', N, T, S) -> (B', K, G, T, S), as the query heads were grouped
        scores = scores + bias.astype(jnp.float32).reshape(bias.shape[0], K, N // K, *bias.shape[2:])
    # a finite minimum instead of -inf: a fully masked row would then give a
    # uniform average rather than NaN (attention_mask never builds one, but be safe)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(B, T, N, H)  # (B, T, N, H)


class Attention(nnx.Module):
    """Project to queries, keys and values, rotate them (RoPE), attend, project back."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD):
        D, N, K, H, p = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, parametrization
        kw = dict(use_bias=cfg.use_bias, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype),
                  rngs=rngs)
        std, out_std = p.hidden_std(cfg.init_std), p.residual_std(cfg.init_std, cfg.n_layers)
        self.query = Einsum("BTD,DNH->BTNH", (D, N, H), ("embed", "heads", "head_dim"), std=p.query_std(cfg.init_std),
                            **kw)
        self.key = Einsum("BSD,DKH->BSKH", (D, K, H), ("embed", "kv_heads", "head_dim"), std=std, **kw)
        self.value = Einsum("BSD,DKH->BSKH", (D, K, H), ("embed", "kv_heads", "head_dim"), std=std, **kw)
        self.out = Einsum("BTNH,NHD->BTD", (N, H, D), ("heads", "head_dim", "embed"), std=out_std, **kw)
        self.scale = p.attention_scale(H)

    def __call__(self, x: jax.Array, mask: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None, *,
                 kv: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
        """x: (B, T, D) queries' inputs; kv: (B, S, D) keys' and values' inputs (default x:
        self-attention; another sequence: cross-attention); bias: (B or 1, N, T, S) added to the scores."""
        kv = x if kv is None else kv
        q, k, v = self.query(x), self.key(kv), self.value(kv)  # (B, T, N, H), (B, S, K, H), (B, S, K, H)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = checkpoint_name(dot_product_attention(q, k, v, mask, bias, self.scale), "attention_out")  # (B, T, N, H)
        return self.out(out)  # (B, T, D)

"""Multi-head (and grouped-query, Ainslie et al., 2023) attention: the projections and RoPE.

The softmax(q k^T) v in the middle is computed by the backend `model.attention` names
(attention_backends.py); who may attend to whom is an AttentionMask.

`decode` is the serving path (KV cache): the keys and values of earlier positions are
kept in preallocated (B, S, K, H) arrays, so each new token costs one query row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from pretrax.config import ModelSection
from pretrax.models.attention_backends import AttentionMask, attend, xla_attention
from pretrax.models.layers import RESIDUAL, Einsum, residual_std
from pretrax.models.parametrization import STANDARD, Parametrization
from pretrax.models.positions import rotate_qk
from pretrax.parallel.activations import constrain


# keys and values with the sequence whole; the same layout as their projections' unless the length is split
WHOLE_KV = ("batch", None, "kv_heads", "head_dim")


class Attention(nnx.Module):
    """Project to queries, keys and values, rotate them (RoPE, xPos), attend, project back."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD):
        D, N, K, H, p = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, parametrization
        kw = dict(use_bias=cfg.use_bias, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype),
                  rngs=rngs)
        std, out_std = p.hidden_std(cfg.init_std), residual_std(cfg, p)
        heads, kv_heads = ("batch", "length", "heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim")
        self.query = Einsum("BTD,DNH->BTNH", (D, N, H), ("embed", "heads", "head_dim"), std=p.query_std(cfg.init_std),
                            out_axes=heads, **kw)
        self.key = Einsum("BSD,DKH->BSKH", (D, K, H), ("embed", "kv_heads", "head_dim"), std=std, out_axes=kv_heads,
                          **kw)
        self.value = Einsum("BSD,DKH->BSKH", (D, K, H), ("embed", "kv_heads", "head_dim"), std=std,
                            out_axes=kv_heads, **kw)
        self.out = Einsum("BTNH,NHD->BTD", (N, H, D), ("heads", "head_dim", "embed"), std=out_std, out_axes=RESIDUAL,
                          **kw)
        self.scale = p.attention_scale(H)
        self.backend = cfg.attention
        self.query_chunk = cfg.attention_query_chunk
        self.dropout = cfg.dropout  # on the attention probabilities, when a dropout key is given

    def __call__(self, x: jax.Array, mask: AttentionMask, rope: tuple[jax.Array, ...] | None = None, *,
                 kv: jax.Array | None = None, bias: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: (B, T, D) queries' inputs; kv: (B, S, D) keys' and values' inputs (default x:
        self-attention; another sequence: cross-attention); bias: (B or 1, N, T, S) added to the scores;
        dropout_key: drop attention probabilities with rate model.dropout (None: no dropout)."""
        kv = x if kv is None else kv
        q, k, v = self.query(x), self.key(kv), self.value(kv)  # (B, T, N, H), (B, S, K, H), (B, S, K, H)
        if self.backend != "ring":  # every query needs every key: under a split sequence (mesh.context) keys and
            k, v = constrain(k, WHOLE_KV), constrain(v, WHOLE_KV)  # values are gathered; the ring passes them round
        if rope is not None:  # RoPE's angles, or xPos's (with its scales)
            q, k = rotate_qk(q, k, rope)
        drop = (self.dropout, dropout_key) if dropout_key is not None and self.dropout > 0 else None
        out = attend(q, k, v, mask, bias=bias, scale=self.scale, backend=self.backend, dropout=drop,
                     query_chunk=self.query_chunk)  # (B, T, N, H)
        out = checkpoint_name(out, "attention_out")
        return self.out(out)  # (B, T, D)

    def decode(self, x: jax.Array, cache: dict, mask: jax.Array, rope: tuple[jax.Array, ...] | None = None, *,
               start: jax.Array | None = None, bias: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Attention of T new queries x (B, T, D) over a KV cache {"k", "v"}: (B, S, K, H) each.

        start given (self-attention): the new tokens sit at positions start..start+T-1; their keys and
        values (K heads, as GQA stores them) are written there first. start None (cross-attention): the
        cache holds the encoder's keys and values, computed once (`project_kv`). mask: (B, T, S) bool
        over the cache's slots (slots not yet written must be masked); bias: (B or 1, N, T, S).
        Returns (out (B, T, D), the cache with the new keys and values).
        """
        q = self.query(x)  # (B, T, N, H)
        if start is not None:
            k, v = self.key(x), self.value(x)  # (B, T, K, H)
            if rope is not None:
                q, k = rotate_qk(q, k, rope)
            cache = {name: jax.lax.dynamic_update_slice_in_dim(cache[name], new.astype(cache[name].dtype), start, 1)
                     for name, new in (("k", k), ("v", v))}
        out = xla_attention(q, cache["k"], cache["v"], mask, bias, self.scale)  # (B, T, N, H)
        return self.out(out), cache

    def project_kv(self, kv: jax.Array) -> dict:
        """Keys and values {"k", "v"} (B, S, K, H) of a sequence (B, S, D): the cross-attention cache."""
        return {"k": self.key(kv), "v": self.value(kv)}

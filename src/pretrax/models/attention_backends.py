"""The attention computation itself, softmax(q k^T * scale + bias) v, by one of several backends.

`model.attention` picks the backend; every one takes the same `AttentionMask` (who may
attend to whom, described by segment ids rather than a dense (B, T, S) array, so the
fused kernels can build their masks blockwise) and gives the same result:

  xla     the reference: einsums and a dense mask, any device, any mask, any bias.
  cudnn   cuDNN's fused flash attention through jax.nn.dot_product_attention: GPU only,
          bfloat16/float16 only; any mask, any bias.
  splash  the Pallas splash-attention kernel (models/splash.py): built for TPU, runs
          interpreted (slowly: tests only) elsewhere; any mask (sliding windows included), no bias.
  ring    under a split sequence (mesh.context), keys and values passed around the devices with a running
          softmax and causal load balancing (models/ring_attention.py); any mask, any position bias;
          the xla backend when the sequence is not split.

`check_backend` refuses a combination that cannot run, with a one-line ConfigError.

Besides the axis legend (pretrax/__init__.py) this file uses G = N // K, the number of
query heads that share one key/value head in grouped-query attention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from pretrax.errors import ConfigError
from pretrax.models import splash
from pretrax.models.block_map import block_map
from pretrax.models.layers import dropout as drop
from pretrax.models.ring_attention import ring_attention
from pretrax.models.score_bias import ScoreBias, bias_array
from pretrax.parallel import activations

BACKENDS = ("xla", "cudnn", "splash", "ring")
_SPLASH_NO_BIAS = "model.attention=splash cannot add the T5 relative position bias (model.positions=relative)"


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class AttentionMask:
    """Query t may attend to key s iff they share a segment id and, when causal, s <= t,
    except that a prefix-LM prefix (prefix[t] and prefix[s] both true) sees all of itself;
    with a window w > 0 (sliding-window attention, self-attention only) also |t - s| < w.

    q_segments: int (B, T); kv_segments: int (B, S); prefix: bool (B, T) or None (self-attention
    only; the initial run of each document). Segment 0 is padding; it still attends to itself,
    so no self-attention row is empty.
    """

    q_segments: jax.Array
    kv_segments: jax.Array
    prefix: jax.Array | None = None
    causal: bool = field(default=True, metadata={"static": True})
    window: int = field(default=0, metadata={"static": True})

    @classmethod
    def self_attention(cls, segment_ids: jax.Array, *, causal: bool = True,
                       prefix: jax.Array | None = None, window: int = 0) -> AttentionMask:
        return cls(segment_ids, segment_ids, None if prefix is None else prefix.astype(bool), causal, window)

    @classmethod
    def cross_attention(cls, q_segments: jax.Array, kv_segments: jax.Array) -> AttentionMask:
        """Decoder segment k reads encoder segment k (no causality across two sequences)."""
        return cls(q_segments, kv_segments, None, False)

    def with_window(self, window: int) -> AttentionMask:
        """This mask with a layer's own sliding window (0: full attention)."""
        return self if window == self.window else dataclasses.replace(self, window=window)

    def same_segment(self) -> jax.Array:
        """(B, T, S) bool: do query t and key s share a segment?"""
        return self.q_segments[:, :, None] == self.kv_segments[:, None, :]

    def dense(self) -> jax.Array:
        """(B, T, S) bool: may query t attend to key s?"""
        return self.rows(self.q_segments, self.prefix, 0)

    def rows(self, q_segments: jax.Array, q_prefix: jax.Array | None, start: jax.Array | int) -> jax.Array:
        """(B, Tq, S) bool: rows start..start+Tq-1 of dense(), for queries with these segment ids (B, Tq)
        and prefix flags (B, Tq) (None when the mask has no prefix): one block of queries at a time."""
        Tq, S = q_segments.shape[1], self.kv_segments.shape[1]
        return self.pairs(q_segments, q_prefix, start + jnp.arange(Tq), self.kv_segments, self.prefix, jnp.arange(S))

    def pairs(self, q_segments: jax.Array, q_prefix: jax.Array | None, q_index: jax.Array,
              kv_segments: jax.Array, kv_prefix: jax.Array | None, k_index: jax.Array) -> jax.Array:
        """(B, Tq, Sk) bool for any block of queries against any block of keys: their segment ids (B, Tq),
        (B, Sk), prefix flags (None when the mask has no prefix) and places in the sequence (Tq,), (Sk,)."""
        q_index, k_index = q_index[:, None], k_index[None, :]
        allowed = q_segments[:, :, None] == kv_segments[:, None, :]
        if self.window:
            allowed = allowed & local(q_index, k_index, self.window)[None]
        if self.causal:
            causal = (k_index <= q_index)[None]  # (1, Tq, Sk)
            if self.prefix is not None:
                causal = causal | (q_prefix[:, :, None] & kv_prefix[:, None, :])  # (B, Tq, Sk)
            allowed = allowed & causal
        return allowed


def local(q_index: jax.Array, k_index: jax.Array, window: int) -> jax.Array:
    """Within a sliding window of `window` positions: |t - s| < window (causality is the mask's other half)."""
    return jnp.abs(q_index - k_index) < window


def chunked_xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                          bias: ScoreBias | jax.Array | None = None, scale: float | None = None, *,
                          chunk: int) -> jax.Array:
    """xla_attention one block of `chunk` queries at a time (when it divides T): each query row's softmax
    runs over all S keys as before, so the numbers are the same, but the float32 (B, K, G, T, S) scores
    and their gradient exist one block at a time. Each block is rematerialised, so that the backward pass
    keeps only its inputs rather than every block's probabilities (about 2 x 8 GiB per v5p chip for
    Llama-3-8B at 4 x 4096 tokens). The mask's rows, and a ScoreBias's (T5's buckets, ALiBi), are made
    inside the block too: no (B, T, S) mask or (B, N, T, S) bias exists whole."""
    B, T, N, H = q.shape
    if not chunk or T <= chunk or T % chunk:
        return xla_attention(q, k, v, mask.dense(), bias, scale)
    n = T // chunk

    def blocks(x, axis=1):  # (..., T, ...) -> (n, ..., chunk, ...), the T axis at `axis`
        return None if x is None else jnp.moveaxis(x.reshape(x.shape[:axis] + (n, chunk) + x.shape[axis + 1:]),
                                                   axis, 0)

    lazy = isinstance(bias, ScoreBias)
    bias_blocks = blocks(bias.q_positions) if lazy else blocks(bias, 2)  # query positions, or (B', N, T, S)

    def one(args):
        i, qc, segments, prefix, bc = args
        rows = mask.rows(segments, prefix, i * chunk)  # (B, chunk, S)
        return xla_attention(qc, k, v, rows, bias.rows(bc) if lazy else bc, scale)  # (B, chunk, N, H)

    xs = (jnp.arange(n), blocks(q), blocks(mask.q_segments), blocks(mask.prefix), bias_blocks)
    out = block_map(jax.checkpoint(one), xs)  # (n, B, chunk, N, H)
    return jnp.moveaxis(out, 0, 1).reshape(B, T, N, H)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                  bias: ScoreBias | jax.Array | None = None, scale: float | None = None,
                  dropout: tuple[float, jax.Array] | None = None) -> jax.Array:
    """The reference. q: (B, T, N, H); k, v: (B, S, K, H); mask: (B, T, S) bool; bias: optional
    float (B or 1, N, T, S) added to the scaled scores (T5's relative position bias, ALiBi), or a
    ScoreBias that gives it; scale:
    default 1/sqrt(H) (muP passes sqrt(base H) / H). Returns (B, T, N, H). Query head n reads
    kv head n // G. Scores and softmax are float32.
    """
    B, T, N, H = q.shape
    K, bias = k.shape[2], bias_array(bias)
    q = q.reshape(B, T, K, N // K, H)  # (B, T, K, G, H): group query heads by their kv head
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * (H**-0.5 if scale is None else scale)
    if bias is not None:  # (B', N, T, S) -> (B', K, G, T, S), as the query heads were grouped
        scores = scores + bias.astype(jnp.float32).reshape(bias.shape[0], K, N // K, *bias.shape[2:])
    # a finite minimum instead of -inf: a fully masked row (a padding decoder row in
    # cross-attention) then gives a uniform average rather than NaN
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:  # (rate, key): training-time dropout on the probabilities (GPT-1's attention dropout)
        probs = drop(probs, *dropout)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(B, T, N, H)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                    bias: ScoreBias | jax.Array | None = None,
                    scale: float | None = None, *, implementation: str = "cudnn") -> jax.Array:
    """cuDNN flash attention; shapes as in xla_attention. The boolean mask reaches cuDNN as an
    additive bias; for a plain causal mask only the (B, 1, T, S) segment part goes that way
    and is_causal lets the kernel skip the upper triangle. implementation="xla" sends the same
    arguments through jax's own path, which is how a CPU test checks them.
    """
    window = None
    if mask.causal and mask.prefix is None:
        allowed, is_causal = mask.same_segment(), True
        if mask.window:  # cuDNN's own sliding window: the kernel skips the blocks outside it
            window = (mask.window - 1, 0)
    else:
        allowed, is_causal = mask.dense(), False
    bias = bias_array(bias)
    return jax.nn.dot_product_attention(
        q, k, v, bias=None if bias is None else bias.astype(q.dtype), mask=allowed[:, None],  # (B, 1, T, S)
        scale=scale, is_causal=is_causal, local_window_size=window, implementation=implementation)


def _problem(backend: str, platform: str, dtype: str, has_bias: bool) -> str | None:
    if backend not in BACKENDS:
        return f"model.attention={backend} is not a backend"
    if backend == "cudnn" and platform != "gpu":
        return f"model.attention=cudnn needs a GPU (this run's devices are {platform})"
    if backend == "cudnn" and dtype not in ("bfloat16", "float16"):
        return f"model.attention=cudnn needs model.dtype=bfloat16 (cuDNN has no {dtype} flash attention)"
    if backend == "splash" and has_bias:
        return _SPLASH_NO_BIAS
    return None


def check_backend(backend: str, *, platform: str, dtype: str, has_bias: bool) -> None:
    """Raise a one-line ConfigError if `backend` cannot run here: platform is jax.default_backend()
    ("cpu", "gpu", "tpu"), dtype the compute dtype's name, has_bias whether scores get a position bias.
    """
    problem = _problem(backend, platform, dtype, has_bias)
    if problem is not None:
        valid = [b for b in BACKENDS if _problem(b, platform, dtype, has_bias) is None]
        raise ConfigError(f"{problem}; valid here: {', '.join(valid)}")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *,
           bias: ScoreBias | jax.Array | None = None,
           scale: float | None = None, backend: str = "xla",
           dropout: tuple[float, jax.Array] | None = None, query_chunk: int = 0) -> jax.Array:
    """Attention by `backend` (one of BACKENDS); shapes as in xla_attention. dropout (rate, key): xla only
    (the fused kernels never form the probabilities; config validation refuses the pair). query_chunk:
    xla without dropout, queries per block (chunked_xla_attention; 0: all at once)."""
    if backend == "xla" and dropout is None and query_chunk:
        return chunked_xla_attention(q, k, v, mask, bias, scale, chunk=query_chunk)
    if backend == "xla":
        return xla_attention(q, k, v, mask.dense(), bias, scale, dropout)
    if dropout is not None:
        raise ConfigError(f"model.dropout needs model.attention=xla; {backend} has no attention dropout")
    if backend == "cudnn":
        return cudnn_attention(q, k, v, mask, bias, scale)
    if backend == "ring":
        return ring_attention(q, k, v, mask, bias, scale, activations.current(),
                              lambda q, k, v, mask, bias, scale: attend(q, k, v, mask, bias=bias, scale=scale,
                                                                        query_chunk=query_chunk),
                              query_chunk=query_chunk)
    if backend == "splash":
        if bias is not None:
            raise ConfigError(f"{_SPLASH_NO_BIAS}; use xla or cudnn")
        prefix = mask.prefix if mask.causal else None  # as in dense(): a prefix only lifts causality
        return splash.attention(q, k, v, mask.q_segments, mask.kv_segments, prefix, causal=mask.causal, scale=scale,
                                window=mask.window)
    raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")

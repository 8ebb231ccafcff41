"""Splash attention: the Pallas flash-attention kernel for TPU, fed pretrax's segment-id masks.

The kernel takes one example in (N, T, H) layout, applies no scale of its own, and knows
only static masks (causal or full) combined with per-token segment ids; everything else
is built from those here:
  - packed documents and padding: segment ids, as they are;
  - grouped-query attention: the kernel reads kv head n // G for query head n itself;
  - prefix-LM: two calls merged per query (see `_prefix_lm`), about 3x a causal call;
  - a sliding window (model.attention_window): the kernel's own LocalMask, (w - 1) keys back (and
    ahead, when not causal), so the tiles outside the band are skipped;
  - a mesh: the kernel is a Pallas call XLA cannot partition, so under a multi-device
    sharding context it runs per shard in shard_map (batch and heads split, lengths whole);
  - tiles: the largest of 512/256/128 that divides each length (other lengths are refused).
Off TPU the kernel is interpreted: correct, and slow enough to be for tests only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

from pretrax.errors import ConfigError
from pretrax.parallel import activations

BLOCKS = (512, 256, 128)  # tile sizes tried, largest first; 128 is the TPU lane width


def block_sizes(T: int, S: int) -> tuple[int, int]:
    """(query, key) tile sizes: the largest of BLOCKS that divides each length."""
    bq, bkv = (next((b for b in BLOCKS if n % b == 0), None) for n in (T, S))
    if bq is None or bkv is None:
        raise ConfigError(f"model.attention=splash needs sequence lengths divisible by 128 (got {T} queries, {S} "
                          f"keys); set data.seq_len (encoder_decoder: data.inputs_len, data.targets_len) to a "
                          f"multiple of 128 or use model.attention=xla")
    return bq, bkv


@functools.cache
def _kernel(causal: bool, N: int, T: int, S: int, interpret: bool, window: int = 0):
    """The kernel for one example: (N, T, H) queries against (K, S, H) keys and values.

    Cached, so each shape's block tables are built once rather than once per layer; built
    eagerly, so the cache holds constants rather than the tracers of whichever jit came first.
    """
    bq, bkv = block_sizes(T, S)
    if window:  # |t - s| < window, and s <= t when causal
        one = sa.LocalMask((T, S), window_size=(window - 1, 0 if causal else window - 1), offset=0)
    else:
        one = sa.CausalMask((T, S)) if causal else sa.FullMask((T, S))
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkv, use_fused_bwd_kernel=True)
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(sa.MultiHeadMask([one] * N), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _call(causal: bool, q: jax.Array, k: jax.Array, v: jax.Array, q_codes: jax.Array,
          kv_codes: jax.Array, *, interpret: bool, window: int = 0) -> jax.Array:
    """q: (B, N, T, H); k, v: (B, K, S, H); codes: int (B, T), (B, S). Query t sees key s iff
    their codes match (and s <= t if causal, and |t - s| < window if a window is given)."""
    N, T, S = q.shape[1], q.shape[2], k.shape[2]
    kernel = _kernel(causal, N, T, S, interpret, window)
    one = lambda q, k, v, qc, kc: kernel(q, k, v, sa.SegmentIds(qc, kc))
    return jax.vmap(one)(q, k, v, q_codes.astype(jnp.int32), kv_codes.astype(jnp.int32))  # (B, N, T, H)


def _prefix_lm(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array, prefix: jax.Array, *,
               interpret: bool, window: int = 0) -> jax.Array:
    """Causal attention, except that a prefix query sees the whole prefix of its document.

    Since the prefix is the initial run of each document, a prefix query may see exactly the
    prefix keys of its document: a full (non-causal) call with codes seg for prefix tokens
    and -1 - seg for the rest gives that, and gives every other query the non-prefix tokens
    of its document (never empty: it holds the query itself; the result is discarded). The
    causal call covers everyone else. Cost: a full call is twice a causal one, so ~3x.
    """
    causal = _call(True, q, k, v, segments, segments, interpret=interpret, window=window)
    codes = jnp.where(prefix, segments, -1 - segments)  # (B, T)
    full = _call(False, q, k, v, codes, codes, interpret=interpret, window=window)
    return jnp.where(prefix[:, None, :, None], full, causal)  # (B, N, T, H)


def _local(q, k, v, q_segments, kv_segments, *prefix, causal: bool, scale: float | None,
           interpret: bool, window: int = 0) -> jax.Array:
    """Attention on arrays that are all on hand (one device or one shard); shapes as in `attention`."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)  # the kernel applies no scale
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # (B, N, T, H), (B, K, S, H), (B, K, S, H)
    if prefix:
        out = _prefix_lm(q, k, v, q_segments, prefix[0], interpret=interpret, window=window)
    else:
        out = _call(causal, q, k, v, q_segments, kv_segments, interpret=interpret, window=window)
    return out.transpose(0, 2, 1, 3)  # (B, T, N, H)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segments: jax.Array, kv_segments: jax.Array,
              prefix: jax.Array | None, *, causal: bool, scale: float | None, window: int = 0) -> jax.Array:
    """q: (B, T, N, H); k, v: (B, S, K, H); segments: int (B, T), (B, S); prefix: bool (B, T) or
    None (causal self-attention only); window: a sliding window (0: none). Returns (B, T, N, H), as
    xla_attention with the same mask."""
    prefix_args = () if prefix is None else (prefix,)
    ctx = activations.current()
    # the devices the step is built for (a TPU topology compiled from a CPU host counts as TPU)
    platform = ctx.mesh.devices.flat[0].platform if ctx is not None else jax.default_backend()
    run = functools.partial(_local, causal=causal, scale=scale, interpret=platform != "tpu", window=window)
    if ctx is None or ctx.mesh.size == 1:
        return run(q, k, v, q_segments, kv_segments, *prefix_args)
    # Lengths stay whole (each query needs every key); batch and heads split as the rules say.
    batch, _, heads, _ = (tuple(ctx.spec(("batch", None, "heads", None), q.shape)) + (None,) * 4)[:4]
    shards = math.prod(ctx.mesh.shape[a] for a in ((heads,) if isinstance(heads, str) else heads or ()))
    if k.shape[2] % shards:  # kv heads the head shards do not divide: give each query head its own copy
        k, v = (jnp.repeat(x, q.shape[2] // k.shape[2], axis=2) for x in (k, v))  # (B, S, N, H)
    # kv heads split like the query heads, so shard i's query heads read shard i's kv heads
    heads_spec, rows = P(batch, None, heads, None), P(batch, None)
    specs = (heads_spec, heads_spec, heads_spec, rows, rows) + (rows,) * len(prefix_args)
    sharded = jax.shard_map(run, mesh=ctx.mesh, in_specs=specs, out_specs=heads_spec, check_vma=False)
    return sharded(q, k, v, q_segments, kv_segments, *prefix_args)

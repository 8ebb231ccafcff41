"""Ring attention (Liu et al., 2023) over the mesh axis that splits the sequence (rule `length`, mesh.context),
with causal load balancing. `model.attention: ring`.

Every device keeps its block of queries; the blocks of keys and values (with their segment ids, prefix
flags and positions) go once around the ring of context devices (jax.lax.ppermute), and each arriving
block's scores are folded into a running softmax: row maximum, sum of exponentials and weighted values, in
float32. No device holds more than one block of the sequence's keys at a time (the all-gather that the
other backends do under a split sequence holds them all).

Causal load balancing: with the sequence split in order, the device holding the last block would have
work at every step and the one holding the first at one step, and the slowest device sets the pace. So
for a causal mask without a prefix-LM prefix, the sequence is first reordered so that device i holds the
i-th and the (2c-1-i)-th of 2c chunks ("zigzag"). Then at every step after the first exactly half of the
arriving block's query-key pairs can attend, on every device, and only that half is computed: all the
queries against the keys' earlier chunk (keys from a device before this one), or the queries' later chunk
against all the keys (keys from a device after it). The reorder moves half of each device's block before
attention and back after it (two ppermutes of half a block each way).

Masked scores all get one value (MASKED), so a query with no key to attend to gets the uniform average
that xla_attention gives it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pretrax.errors import ConfigError
from pretrax.models.block_map import block_map
from pretrax.models.score_bias import ScoreBias
from pretrax.parallel.activations import ShardingContext

# a masked score: any one value for all of them gives a row with no key to attend to xla_attention's uniform
# average; -1e30 rather than float32's minimum keeps every difference of two of them finite
MASKED = -1e30

Q_AXES, KV_AXES, ROW_AXES = ("batch", "length", "heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim"), \
    ("batch", "length")


def ring_axis(ctx: ShardingContext | None, shape: tuple[int, int]) -> tuple[str | None, int]:
    """(the mesh axis that splits a (B, T) sequence, its size); (None, 1) when nothing splits it."""
    if ctx is None:
        return None, 1
    axis = ctx.spec(ROW_AXES, shape)[1:2]
    axis = axis[0] if axis else None
    if axis is None:
        return None, 1
    if not isinstance(axis, str):
        if len(axis) != 1:
            raise ConfigError(f"model.attention=ring passes blocks around one mesh axis; mesh.rules maps 'length' "
                              f"to {list(axis)}")
        axis = axis[0]
    return axis, ctx.mesh.shape[axis]


def zigzag_order(length: int, ways: int) -> np.ndarray:
    """The sequence reordered so that device i of `ways` holds chunks i and 2 ways - 1 - i of 2 ways."""
    chunks = np.arange(length).reshape(2 * ways, length // (2 * ways))
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * ways - 1 - i]]) for i in range(ways)])


def _chunk_home(chunk: int, ways: int) -> int:
    """The device that holds chunk `chunk` of 2 ways in the zigzag order."""
    return chunk if chunk < ways else 2 * ways - 1 - chunk


def to_zigzag(x: jax.Array, axis: str, ways: int) -> jax.Array:
    """One device's block (B, Tl, ...) of a sequence split in order -> its block in the zigzag order.

    Device d holds chunks 2d and 2d + 1 (its halves); each goes to the device that holds it in the zigzag
    order (two ppermutes of half a block). Device i receives chunks i and 2 ways - 1 - i, one even and one
    odd: the even one came with the first halves."""
    half = x.shape[1] // 2
    firsts = jax.lax.ppermute(x[:, :half], axis, [(d, _chunk_home(2 * d, ways)) for d in range(ways)])
    seconds = jax.lax.ppermute(x[:, half:], axis, [(d, _chunk_home(2 * d + 1, ways)) for d in range(ways)])
    even = jax.lax.axis_index(axis) % 2 == 0  # then this device's earlier chunk (i) is the even one
    return jnp.where(even, jnp.concatenate([firsts, seconds], 1), jnp.concatenate([seconds, firsts], 1))


def from_zigzag(x: jax.Array, axis: str, ways: int) -> jax.Array:
    """The inverse of to_zigzag: chunk j goes back to device j // 2."""
    half, me = x.shape[1] // 2, jax.lax.axis_index(axis)
    even = me % 2 == 0
    early, late = x[:, :half], x[:, half:]
    even_chunk, odd_chunk = jnp.where(even, early, late), jnp.where(even, late, early)
    # device i's even chunk is i (i even) or 2 ways - 1 - i (i odd); its odd chunk the other
    evens = [i if i % 2 == 0 else 2 * ways - 1 - i for i in range(ways)]
    odds = [2 * ways - 1 - i if i % 2 == 0 else i for i in range(ways)]
    firsts = jax.lax.ppermute(even_chunk, axis, [(i, evens[i] // 2) for i in range(ways)])
    seconds = jax.lax.ppermute(odd_chunk, axis, [(i, odds[i] // 2) for i in range(ways)])
    return jnp.concatenate([firsts, seconds], 1)


def _places(device: jax.Array, size: int, ways: int, balanced: bool) -> jax.Array:
    """The places in the whole sequence (size,) of the `size` positions a device holds."""
    if not balanced:
        return device * size + jnp.arange(size)
    half = size // 2
    return jnp.concatenate([device * half + jnp.arange(half), (2 * ways - 1 - device) * half + jnp.arange(half)])


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask, bias: ScoreBias | jax.Array | None,
                   scale: float | None, ctx: ShardingContext | None, fallback, query_chunk: int = 0) -> jax.Array:
    """Attention with keys and values passed around the ring; shapes as in xla_attention (q (B, T, N, H), k and
    v (B, S, K, H)), mask an AttentionMask. Without a split sequence this is `fallback(q, k, v, mask, bias,
    scale)` (the xla backend)."""
    B, T, N, H = q.shape
    S = k.shape[1]
    axis, ways = ring_axis(ctx, (B, T))
    if ways == 1:
        return fallback(q, k, v, mask, bias, scale)
    if isinstance(bias, jax.Array):
        raise ConfigError("model.attention=ring takes position biases as positions (ScoreBias), not as arrays")
    if T % ways or S % ways:
        raise ConfigError(f"model.attention=ring needs the lengths ({T} queries, {S} keys) divisible by the "
                          f"{ways} devices of mesh axis {axis}")
    balanced = bool(mask.causal and mask.prefix is None and T == S and T % (2 * ways) == 0)
    rows = {"q": q, "k": k, "v": v, "q_segments": mask.q_segments, "kv_segments": mask.kv_segments}
    if mask.prefix is not None:
        rows["prefix"] = mask.prefix
    if bias is not None:
        rows["q_positions"], rows["k_positions"] = bias.q_positions, bias.k_positions
    specs = {name: ctx.spec({"q": Q_AXES, "k": KV_AXES, "v": KV_AXES}.get(name, ROW_AXES), x.shape)
             for name, x in rows.items()}
    heads = specs["q"][2] if len(specs["q"]) > 2 else None
    weights = () if bias is None else (bias.weights,)
    weight_specs = () if bias is None else (P(*([None] * (bias.weights.ndim - 1)), heads),)

    def local(rows: dict, *weights) -> jax.Array:
        return _ring(rows, weights[0] if weights else None, mask=mask, bias_fn=None if bias is None else bias.fn,
                     scale=H**-0.5 if scale is None else scale, axis=axis, ways=ways, balanced=balanced,
                     query_chunk=query_chunk)

    return jax.shard_map(local, mesh=ctx.mesh, in_specs=(specs, *weight_specs), out_specs=specs["q"],
                         check_vma=False)(rows, *weights)


def _blocks(x: jax.Array, axis: int, n: int) -> jax.Array:
    """x's `axis` cut into n blocks, the blocks on a new leading axis."""
    return jnp.moveaxis(x.reshape(x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]), axis, 0)


def _unblocks(x: jax.Array, axis: int) -> jax.Array:
    """The inverse of _blocks for arrays whose rows sit at `axis` (after the leading block axis is removed)."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _ring(rows: dict, weights, *, mask, bias_fn, scale: float, axis: str, ways: int, balanced: bool,
          query_chunk: int) -> jax.Array:
    """One device's part: its queries against every block of keys as the blocks come round."""
    if balanced:
        rows = {name: to_zigzag(x, axis, ways) for name, x in rows.items()}
    q = rows["q"]
    B, Tl, N, H = q.shape
    K, Sl = rows["k"].shape[2], rows["k"].shape[1]
    me = jax.lax.axis_index(axis)
    q_index = _places(me, Tl, ways, balanced)
    prefix = rows.get("prefix")
    query = {"q": q.reshape(B, Tl, K, N // K, H), "segments": rows["q_segments"], "prefix": prefix,
             "positions": rows.get("q_positions"), "index": q_index}
    block = {"k": rows["k"], "v": rows["v"], "segments": rows["kv_segments"], "prefix": prefix,
             "positions": rows.get("k_positions")}
    state = (jnp.zeros((B, K, N // K, Tl, H), jnp.float32),  # weighted values
             jnp.full((B, K, N // K, Tl), MASKED),  # running row maximum
             jnp.zeros((B, K, N // K, Tl), jnp.float32))  # sum of exponentials
    half = Tl // 2

    def fold_rows(qr: dict, kb: dict, k_index: jax.Array, o_old, m_old, l_old):
        """One block of query rows qr folded over the keys kb: their new (o, m, l)."""
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", qr["q"], kb["k"], preferred_element_type=jnp.float32) * scale
        if bias_fn is not None:
            b = bias_fn(qr["positions"], kb["positions"], weights)  # (B', N, Tr, Sc)
            scores = scores + b.reshape(b.shape[0], K, N // K, *b.shape[2:])
        allowed = mask.pairs(qr["segments"], qr["prefix"], qr["index"], kb["segments"], kb["prefix"], k_index)
        scores = jnp.where(allowed[:, None, None], scores, MASKED)
        # the running maximum only keeps exp() in range: the result does not depend on it, so neither does
        # the gradient (differentiating max() would also split it among ties)
        m_new = jax.lax.stop_gradient(jnp.maximum(m_old, scores.max(-1)))
        p = jnp.exp(scores - m_new[..., None])
        decay = jnp.exp(m_old - m_new)
        pv = jnp.einsum("BKGTS,BSKH->BKGTH", p.astype(kb["v"].dtype), kb["v"], preferred_element_type=jnp.float32)
        return o_old * decay[..., None] + pv, m_new, l_old * decay + p.sum(-1)

    def fold(state, block, source, rows_from: int, keys_to: int):
        """The state with query rows rows_from: folded over the block's keys :keys_to, `query_chunk` rows at a
        time (each block rematerialised, as chunked_xla_attention), so no (rows, keys) float32 array exists."""
        o, m, l = state
        rows = {name: None if x is None else (x[rows_from:] if name == "index" else x[:, rows_from:])
                for name, x in query.items()}
        rows.update(o=o[..., rows_from:, :], m=m[..., rows_from:], l=l[..., rows_from:])
        kb = {name: None if x is None else x[:, :keys_to] for name, x in block.items()}
        k_index = _places(source, Sl, ways, balanced)[:keys_to]
        count = Tl - rows_from
        n = count // query_chunk if query_chunk and count > query_chunk and count % query_chunk == 0 else 1
        if n == 1:
            new = fold_rows(rows, kb, k_index, rows["o"], rows["m"], rows["l"])
        else:
            axes = {"index": 0, "o": 3, "m": 3, "l": 3}  # where each row-indexed array keeps its rows (else 1)
            split = {name: None if x is None else _blocks(x, axes.get(name, 1), n) for name, x in rows.items()}
            new = block_map(jax.checkpoint(lambda r: fold_rows(r, kb, k_index, r["o"], r["m"], r["l"])), split)
            new = tuple(_unblocks(x, 3) for x in new)
        if rows_from == 0:
            return new
        return tuple(old.at[..., rows_from:, :].set(x) if x.ndim == 5 else old.at[..., rows_from:].set(x)
                     for old, x in zip(state, new))

    def step(state, block, source, first: bool):
        if not balanced or first:
            return fold(state, block, source, 0, Sl)
        # keys from an earlier device: its earlier chunk is before both of ours, its later one after both;
        # from a later device: both its chunks are after our earlier chunk and before our later one
        return jax.lax.cond(source < me, lambda s, b: fold(s, b, source, 0, Sl // 2),
                            lambda s, b: fold(s, b, source, half, Sl), state, block)

    ring = [(i, (i + 1) % ways) for i in range(ways)]
    for t in range(ways):
        source = (me - t) % ways
        state = jax.checkpoint(step, static_argnums=(3,))(state, block, source, t == 0)
        if t < ways - 1:
            block = jax.tree.map(lambda x: jax.lax.ppermute(x, axis, ring), block)
    o, _, l = state
    out = o / l[..., None]  # (B, K, G, Tl, H)
    out = jnp.moveaxis(out, 3, 1).reshape(B, Tl, N, H).astype(rows["v"].dtype)
    return from_zigzag(out, axis, ways) if balanced else out

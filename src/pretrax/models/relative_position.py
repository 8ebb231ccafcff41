"""T5 relative position bias (Raffel et al., 2020).

Instead of adding positions to the inputs, every attention score q·k gets a
learned scalar per head that depends only on the (bucketed) distance from the
query to the key. A stack owns one table (relpos_buckets, heads); it is turned
into a bias once per forward pass and shared by every layer of the stack.

Buckets: distances below `max_exact` each get their own bucket; larger ones
share buckets whose widths grow logarithmically up to `max_distance`, beyond
which everything falls in the last bucket. A bidirectional (encoder) bias gives
half the buckets to keys after the query and half to keys before it; a causal
(decoder) bias only ever sees keys at or before the query and uses all buckets
for those. max_exact is half the buckets of one direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.models.layers import param
from pretrax.models.score_bias import ScoreBias


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """Bucket of each relative position = key position - query position (int array, any shape).

    bidirectional: buckets [0, num_buckets/2) for keys at or before the query,
    [num_buckets/2, num_buckets) for keys after it. Causal: keys after the query
    (never attended) land in bucket 0 along with distance 0.
    """
    distance = -relative_position  # how far back the key is from the query
    offset = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(distance < 0, num_buckets, 0)  # keys after the query use the upper half
        distance = jnp.abs(distance)
    else:
        distance = jnp.maximum(distance, 0)
    max_exact = num_buckets // 2
    # logarithmic buckets for max_exact <= distance < max_distance, computed in float32;
    # max(distance, 1) only keeps log() finite where the exact branch is taken anyway
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    log_bucket = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return offset + jnp.where(distance < max_exact, distance, log_bucket)


@dataclass(frozen=True)
class BucketedBias:
    """T5's bias of query and key positions from a (buckets, N) table: the `fn` of a ScoreBias."""

    bidirectional: bool
    num_buckets: int
    max_distance: int

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array, table: jax.Array) -> jax.Array:
        """query_positions (B, T), key_positions (B, S) int -> float32 bias (B, N, T, S).

        Positions restart at each packed document, so the bias of a pair depends only
        on their distance inside that document (pairs across documents are masked anyway).
        """
        rel = key_positions[:, None, :] - query_positions[:, :, None]  # (B, T, S)
        buckets = relative_position_bucket(rel, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        # XLA's gather puts the 16 heads last whichever way round the table is, and the TPU pads them to a
        # 128-wide tile: this gather's gradient is the largest temporary of ul2_20b at 4096 inputs (docs/benchmarks.md)
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # (B, T, S, N)
        return jnp.transpose(bias, (0, 3, 1, 2))  # (B, N, T, S)


class RelativePositionBias(nnx.Module):
    """The table (relpos_buckets, heads) of one stack and the bias it gives to a pair of position arrays."""

    def __init__(self, n_heads: int, *, num_buckets: int, max_distance: int, bidirectional: bool, std: float,
                 param_dtype, rngs: nnx.Rngs):
        self.bucketed = BucketedBias(bidirectional, num_buckets, max_distance)
        self.embedding = param(rngs, nnx.initializers.normal(std), (num_buckets, n_heads), ("relpos_buckets", "heads"),
                               param_dtype)

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> ScoreBias:
        """The bias (B, N, T, S) of query_positions (B, T) against key_positions (B, S), unevaluated."""
        return ScoreBias(query_positions, key_positions, self.embedding[...], self.bucketed)

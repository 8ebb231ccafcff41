"""A bias on the attention scores that is a function of positions (T5's relative buckets, ALiBi's -m |i - j|),
carried as its inputs (positions and a small table) instead of as a (B, N, T, S) array.

The attention that adds it computes it where it is used: in each layer, or one block of queries at a time
(model.attention_query_chunk). So no float32 (B, N, T, S) bias lives across the layers of a stack, no
(B, N, T, S) gradient of it is summed over them, and T5's table gets its gradient block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ScoreBias:
    """bias(q_positions, k_positions, weights) -> float32 (B or 1, N, T, S), kept unevaluated.

    q_positions: int (B or 1, T); k_positions: int (B or 1, S); weights: T5's (buckets, N) table or ALiBi's
    (N,) slopes. fn is static: a module-level function or a frozen dataclass, so two passes that build the
    same bias have equal tree structures.
    """

    q_positions: jax.Array
    k_positions: jax.Array
    weights: jax.Array
    fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = field(metadata={"static": True})

    def rows(self, q_positions: jax.Array) -> jax.Array:
        """The bias of these queries (B or 1, Tq) against every key: (B or 1, N, Tq, S)."""
        return self.fn(q_positions, self.k_positions, self.weights)

    def dense(self) -> jax.Array:
        return self.rows(self.q_positions)


def bias_array(bias: ScoreBias | jax.Array | None) -> jax.Array | None:
    """The (B or 1, N, T, S) array of a bias given either way (None stays None)."""
    return bias.dense() if isinstance(bias, ScoreBias) else bias

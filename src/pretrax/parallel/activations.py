"""Activation sharding: how the model's intermediate arrays are laid out over the mesh.

Weights get their layout from their logical axes at creation; activations would
otherwise be left to XLA's propagation, which under FSDP can keep a whole global
batch of activations (and logits) on every chip. Model code names an activation's
logical axes with `constrain(x, ("batch", "length", "act_embed"))`; the mapping to
mesh axes comes from the same `mesh.rules` table as the weights. Outside a
`sharding_context` (a model built in a test, sampling) `constrain` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pretrax.parallel.rules import logical_to_mesh_spec


@dataclass(frozen=True)
class ShardingContext:
    mesh: Mesh
    rules: Mapping[str, Any]

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """The PartitionSpec these logical axes map to (a dimension the mesh does not divide stays whole)."""
        return logical_to_mesh_spec(logical, self.rules, shape, self.mesh)


_CURRENT: contextvars.ContextVar[ShardingContext | None] = contextvars.ContextVar("pretrax_sharding", default=None)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Mapping[str, Any]) -> Iterator[ShardingContext]:
    """Within this block (a jitted step's tracing), `constrain` lays activations out over `mesh`."""
    token = _CURRENT.set(ShardingContext(mesh, dict(rules)))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current() -> ShardingContext | None:
    """The active context, or None (one device, or no mesh given)."""
    return _CURRENT.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """x laid out by its logical axes under the active context; x itself outside one."""
    ctx = _CURRENT.get()
    if ctx is None or ctx.mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, ctx.spec(logical, x.shape)))

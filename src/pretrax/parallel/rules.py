"""Map logical axis names to mesh axes: the one place parallelism is decided.

Model code names the logical axes of every weight ('embed', 'mlp', ...); the
config's `mesh.rules` table says which mesh axis (or axes) each one is split
over. Changing the parallelism never touches model code.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)


def logical_to_mesh_spec(
    logical: Sequence[str | None], rules: Mapping[str, Any], shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> P:
    """PartitionSpec for one array from its logical axis names.

    A mesh axis is used at most once per array (the first logical axis that
    claims it wins). When `shape` and `mesh` are given, a dimension that the
    mesh axes do not divide evenly is replicated instead (e.g. GPT-1's vocab
    of 40,478 over tensor=4), which keeps every config runnable.
    """
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical):
        target = rules.get(name) if name is not None else None
        axes = [a for a in (target if isinstance(target, (list, tuple)) else [target]) if a is not None]
        axes = [a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1)]
        if axes and shape is not None and mesh is not None:
            size = 1
            for a in axes:
                size *= mesh.shape[a]
            if shape[dim] % size:
                log.info("replicating axis %r of size %d: not divisible by mesh axes %s", name, shape[dim], axes)
                axes = []
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def tree_shardings(abstract_tree: Any, logical_specs: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """NamedShardings for a tree of arrays given a matching tree of logical PartitionSpecs."""

    def one(spec, x):
        logical = tuple(spec) if spec is not None else ()
        logical = logical + (None,) * (len(x.shape) - len(logical))
        return NamedSharding(mesh, logical_to_mesh_spec(logical, rules, x.shape, mesh))

    return jax.tree.map(one, logical_specs, abstract_tree, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any], ndim: int = 2) -> NamedSharding:
    """Sharding of a (B, T, ...) batch: B over the mesh axes 'batch' maps to, the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh_spec(("batch",) + ("length",) * (ndim - 1), rules, mesh=mesh))

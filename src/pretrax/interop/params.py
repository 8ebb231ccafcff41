"""A model's parameters as a flat {name: array} with one name per layer, and back.

Names join the nnx state's keys with dots ("blocks.0.attn.query.kernel"). With
model.scan_layers the state holds each stack's layers as one array with a leading
(L,) axis; here they are always split into per-layer names, so the family maps
(hf_families.py) see the same names whichever way the run was trained.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

_STACK = re.compile(r"^((?:[a-z_]+\.)?blocks)\.(.*)$")  # "blocks.rest" or "decoder.blocks.rest" under scan


def _name(path) -> str:
    keys = [str(getattr(k, "key", getattr(k, "idx", ""))) for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return ".".join(keys)


def flatten(params: Any, scanned: bool) -> dict[str, np.ndarray]:
    """{per-layer name: float32 numpy array} of a params pytree (sharded arrays are gathered)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, value = _name(path), np.asarray(jax.device_get(leaf), np.float32)
        stacked = _STACK.match(name) if scanned else None
        if stacked:
            for i, layer in enumerate(value):  # (L, ...) -> L names
                flat[f"{stacked.group(1)}.{i}.{stacked.group(2)}"] = layer
        else:
            flat[name] = value
    return flat


def shapes(abstract_params: Any, scanned: bool) -> dict[str, tuple[int, ...]]:
    """{per-layer name: shape} of an abstract params pytree, as flatten() would name them."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        name, shape = _name(path), tuple(leaf.shape)
        stacked = _STACK.match(name) if scanned else None
        if stacked:
            for i in range(shape[0]):
                out[f"{stacked.group(1)}.{i}.{stacked.group(2)}"] = shape[1:]
        else:
            out[name] = shape
    return out


def unflatten(flat: dict[str, np.ndarray], abstract_params: Any, shardings: Any, scanned: bool) -> Any:
    """The params pytree of abstract_params filled from flat, each array placed on its sharding."""
    leaves = []
    paths = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    sharding_leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    for (path, leaf), sharding in zip(paths, sharding_leaves):
        name = _name(path)
        stacked = _STACK.match(name) if scanned else None
        if stacked:
            value = np.stack([flat[f"{stacked.group(1)}.{i}.{stacked.group(2)}"] for i in range(leaf.shape[0])])
        else:
            value = flat[name]
        leaves.append(jax.device_put(np.asarray(value, leaf.dtype), sharding))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_params), leaves)

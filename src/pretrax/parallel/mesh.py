"""Build the (data, fsdp, tensor) device mesh from the config.

One size may be -1, meaning "all devices the other axes leave over". A mesh
whose product is not the device count is refused before anything runs.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from pretrax.config import MESH_AXES, MeshSection
from pretrax.errors import ConfigError


def resolve_mesh_shape(mesh_cfg: MeshSection, num_devices: int) -> tuple[int, ...]:
    sizes = [getattr(mesh_cfg, a) for a in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh axes {_describe(mesh_cfg)} leave no whole size for the -1 axis on {num_devices} devices; "
                f"the fixed axes must multiply to a divisor of {num_devices}"
            )
        sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh {'x'.join(map(str, sizes))} ({_describe(mesh_cfg)}) has {math.prod(sizes)} devices but "
            f"{num_devices} are available; make mesh.data * mesh.fsdp * mesh.tensor = {num_devices} or set one to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: MeshSection, devices: list | None = None) -> Mesh:
    """A Mesh over all (or the given) devices with axes (data, fsdp, tensor)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    # Auto axes: shardings are given at the jit boundary and XLA propagates them
    # inside, so model code needs no per-op sharding annotations.
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if devices == list(jax.devices()):
        # lets jax pick a topology-aware device order (ICI neighbours on TPU)
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def batch_parallelism(mesh: Mesh, rules: dict) -> int:
    """How many ways the batch dimension is split (the product of the mesh axes 'batch' maps to)."""
    target = rules.get("batch")
    axes = target if isinstance(target, (list, tuple)) else [target]
    return math.prod(mesh.shape[a] for a in axes if a is not None)


def _describe(mesh_cfg: MeshSection) -> str:
    return ", ".join(f"{a}={getattr(mesh_cfg, a)}" for a in MESH_AXES)

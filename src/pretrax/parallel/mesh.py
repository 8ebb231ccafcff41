"""Build the (data, fsdp, expert, context, tensor) device mesh from the config.

One size may be -1, meaning "all devices the other axes leave over". A mesh
whose product is not the device count is refused before anything runs.

Several TPU slices (mesh.dcn_data > 1): data, fsdp, expert, context and tensor describe the
mesh inside one slice (fast ICI links); the slices add an outer factor to the
data axis, so only the data-parallel gradient reduction crosses the slower
data-centre network (DCN), and the batch rule needs no change.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
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
            f"{num_devices} are available; make mesh.data * mesh.fsdp * mesh.expert * mesh.context * mesh.tensor = {num_devices} or set one to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: MeshSection, devices: list | None = None) -> Mesh:
    """A Mesh over all (or the given) devices with axes (data, fsdp, expert, context, tensor)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    # Auto axes: shardings are given at the jit boundary and XLA propagates them
    # inside. (At pod scale XLA may then keep a whole fsdp group's batch on every
    # chip: docs/benchmarks.md, "pretrax compile".)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    slices = getattr(mesh_cfg, "dcn_data", 1)
    if slices > 1:
        return Mesh(_multi_slice_grid(mesh_cfg, devices, slices), MESH_AXES, axis_types=auto)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    if devices[0].platform == "tpu":
        # ICI neighbours next to each other; a mesh axis may take part of a physical one (tensor 8 on 4x4x4)
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=auto)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def _multi_slice_grid(mesh_cfg: MeshSection, devices: list, slices: int) -> np.ndarray:
    """Devices as (slices x data, fsdp, expert, tensor): slice s holds data rows [s*data, (s+1)*data)."""
    found = {getattr(d, "slice_index", None) for d in devices}
    need = f"mesh.dcn_data={slices} needs devices from {slices} TPU slices, but these {len(devices)} devices"
    if None in found:
        raise ConfigError(f"{need} have no slice index (not a multi-slice TPU job); use mesh.dcn_data=1")
    if len(found) != slices:
        raise ConfigError(f"{need} are in {len(found)}; set mesh.dcn_data={len(found)}")
    try:
        per_slice = resolve_mesh_shape(mesh_cfg, len(devices) // slices)
    except ConfigError as e:
        raise ConfigError(f"{e} (per slice: {len(devices)} devices in mesh.dcn_data={slices} slices)") from None
    return mesh_utils.create_hybrid_device_mesh(per_slice, (slices,) + (1,) * (len(MESH_AXES) - 1), devices, allow_split_physical_axes=True)


def batch_parallelism(mesh: Mesh, rules: dict) -> int:
    """How many ways the batch dimension is split (the product of the mesh axes 'batch' maps to)."""
    target = rules.get("batch")
    axes = target if isinstance(target, (list, tuple)) else [target]
    return math.prod(mesh.shape[a] for a in axes if a is not None)


def _describe(mesh_cfg: MeshSection) -> str:
    return ", ".join(f"{a}={getattr(mesh_cfg, a)}" for a in MESH_AXES)

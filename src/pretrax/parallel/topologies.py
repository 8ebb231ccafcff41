"""TPU slices by their Cloud TPU accelerator-type names (v4-128, v5e-256, v5p-1024, v6e-64).

The number in a name counts TensorCores for v4 and v5p (two per chip, used as
one "megacore" device) and chips for v5e and v6e, as `gcloud` names them; so
v4-128 is 64 chips and v5e-256 is 256. Each name maps to the physical chip
grid libtpu describes (e.g. "v5p:4x4x4") and to the HBM of one chip.
"""

from __future__ import annotations

import dataclasses
import re

from pretrax.errors import ConfigError

_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Generation:
    libtpu_name: str  # the prefix of libtpu's topology strings
    hbm_gib: float  # HBM per chip
    cores_per_unit: int  # 2: the name's number counts TensorCores (v4, v5p); 1: it counts chips
    grids: dict  # chips -> physical chip grid
    max_chips: int  # the largest slice Cloud TPU sells


GENERATIONS = {
    "v4": Generation("v4", 32, 2, _GRID_3D, 2048),
    "v5e": Generation("v5e", 16, 1, _GRID_2D, 256),
    "v5p": Generation("v5p", 95, 2, _GRID_3D, 4096),
    "v6e": Generation("v6e", 32, 1, _GRID_2D, 256),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One chip's peaks, for the roofline step-time estimate (pretrax.roofline)."""

    peak_tflops: float  # bf16 dense
    hbm_gbps: float  # HBM bandwidth, GB/s
    ici_gbps: float  # inter-chip interconnect, GB/s per chip, one direction (the docs' Gbps / 8)


# Per chip, from the Cloud TPU documentation (docs.cloud.google.com/tpu/docs/<generation>), as read 2026-12:
CHIP_SPECS = {
    # v4: "275 teraflops (bf16)", "HBM2 capacity and bandwidth 32 GiB, 1200 GBps"; ICI 2400 Gbps per chip
    # (the TPU system-architecture page's "Interchip Interconnect BW"; the v4 page gives only pod figures)
    "v4": ChipSpec(275.0, 1200.0, 300.0),
    # v5e: "197 TFLOPs", "16 GB, 819 GBps", "Interchip Interconnect BW 1600 Gbps" (bidirectional 400 GBps)
    "v5e": ChipSpec(197.0, 819.0, 200.0),
    # v5p: "459 TFLOPs", "95GB, 2765 GBps", "Interchip Interconnect BW 4800 Gbps" (bidirectional 1200 GBps)
    "v5p": ChipSpec(459.0, 2765.0, 600.0),
    # v6e: "918 TFLOPs", "HBM bandwidth per chip 1638 GBps", "Bidirectional ICI bandwidth (per chip) 800 GBps"
    "v6e": ChipSpec(918.0, 1638.0, 400.0),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. "v5p-128"
    generation: str  # v4, v5e, v5p, v6e
    chips: int
    grid: tuple[int, ...]
    hbm_gib: float

    @property
    def libtpu_name(self) -> str:
        return f"{GENERATIONS[self.generation].libtpu_name}:{'x'.join(map(str, self.grid))}"

    @property
    def spec(self) -> ChipSpec:
        return CHIP_SPECS[self.generation]

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Four chips per host (2x2x1), fewer on the smallest slices."""
        grid = tuple(self.grid) + (1,) * (3 - len(self.grid))
        return (min(grid[0], 2), min(grid[1], 2), 1)


def valid_names() -> list[str]:
    return [f"{gen}-{chips * g.cores_per_unit}" for gen, g in GENERATIONS.items()
            for chips in g.grids if chips <= g.max_chips]


def parse_topology(name: str) -> Topology:
    """'v5p-128' -> Topology(v5p, 64 chips, grid 4x4x4, 95 GiB); ConfigError naming the valid ones otherwise."""
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
    gen = _ALIASES.get(match.group(1), match.group(1)) if match else None
    if gen in GENERATIONS:
        g = GENERATIONS[gen]
        count = int(match.group(2))
        chips = count // g.cores_per_unit
        if count % g.cores_per_unit == 0 and chips in g.grids and chips <= g.max_chips:
            return Topology(name, gen, chips, g.grids[chips], g.hbm_gib)
    raise ConfigError(f"unknown TPU topology {name!r}; valid: {', '.join(valid_names())}")

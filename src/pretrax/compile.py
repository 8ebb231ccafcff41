"""`pretrax compile`: check that a config compiles and fits on a TPU topology before paying for the pod.

libtpu (`pip install -e ".[tpu]"`) describes any TPU slice as compile-only
devices, on any machine. The real train step (train/step.py) is lowered with
abstract arguments that carry their shardings on a mesh over those devices,
and the TPU compiler builds it: the per-chip memory and FLOPs it reports are
the pod's own. No parameter is ever allocated.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from typing import Any

from pretrax.config import Config
from pretrax.errors import ConfigError, PretraxError
from pretrax.parallel.topologies import Topology, parse_topology

GIB = 2**30
FITS, DOES_NOT_FIT = 0, 3  # the CLI's exit codes


def compile_for_topology(cfg: Config, topology: str, num_slices: int | None = None) -> dict[str, Any]:
    """Compile cfg's train step for `num_slices` slices of `topology`; returns the numbers `pretrax compile` prints."""
    topo = parse_topology(topology)
    cfg = with_slices(cfg, num_slices)
    slices = cfg.mesh.dcn_data
    devices = topology_devices(topo, slices)

    import jax

    from pretrax.plan import make_plan
    from pretrax.train.step import make_train_step

    plan = make_plan(cfg, devices=devices)
    setup, flops, mesh = plan.setup, plan.flops, plan.mesh
    chips = topo.chips * slices
    report = {
        "topology": topo.name,
        "slices": slices,
        "chips": chips,
        "device_kind": devices[0].device_kind,
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "parameters": plan.params,
        "tokens_per_step": flops.tokens,
        "model_flops_per_token": flops.per_token,
        "model_flops_per_step": flops.total,
        "hbm_gib": topo.hbm_gib,
        "jax": jax.__version__,
    }
    start = time.perf_counter()
    try:
        compiled = make_train_step(setup).lower(setup.abstract_state(), abstract_batch(setup)).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # the TPU compiler refuses a program that cannot fit, before any memory analysis exists
        return {**report, **out_of_memory(str(e), topo.hbm_gib), "compile_seconds": _since(start)}
    memory = memory_of(compiled)
    total_gib = memory["total"] / GIB
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per program in some jax versions
    return {
        **report,
        "compile_seconds": _since(start),
        "memory_bytes": memory,
        "fits": total_gib <= topo.hbm_gib,
        "shortfall_gib": round(max(0.0, total_gib - topo.hbm_gib), 3),
        # per chip: the partitioned program is one chip's; a scanned layer body is counted once, not per layer
        "xla_flops_per_step_per_chip": float(cost.get("flops", 0.0)),
    }


def memory_of(compiled) -> dict[str, int]:
    """Bytes per chip of the compiled step; the donated state's outputs reuse its arguments' buffers."""
    mem = compiled.memory_analysis()
    memory = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,  # outputs written into donated arguments: counted once
        "temporaries": mem.temp_size_in_bytes,
        "code": mem.generated_code_size_in_bytes,
    }
    total = memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"] + memory["code"]
    return {**memory, "total": total}


_SIZE = r"([\d.]+)([KMGT]?)"  # XLA's human-readable bytes: binary units, "G" = GiB
_UNITS = {"": 2**-30, "K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}


def out_of_memory(message: str, hbm_gib: float) -> dict[str, Any]:
    """The report's fit fields from the TPU compiler's RESOURCE_EXHAUSTED message."""
    line = next((ln for ln in message.splitlines() if "RESOURCE_EXHAUSTED" in ln), message).strip()
    line = line[line.index("RESOURCE_EXHAUSTED"):]
    needed = re.search(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)", line)
    used = re.search(rf"[Uu]sed {_SIZE} of {_SIZE} hbm", line)
    found = needed or used
    if found:
        need, have = (float(found.group(i)) * _UNITS[found.group(i + 1)] for i in (1, 3))
        hbm_gib = have
    return {
        "fits": False,
        "compiler_message": line,
        "needed_gib": round(need, 3) if found else None,  # at least this much: the compiler stops at the first excess
        "hbm_gib": round(hbm_gib, 3),  # the compiler's own figure of usable HBM when it gives one
        "shortfall_gib": round(need - hbm_gib, 3) if found else None,
    }


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 1)


def with_slices(cfg: Config, num_slices: int | None) -> Config:
    """--num-slices K sets mesh.dcn_data (K slices); given both, they must agree."""
    if num_slices is None:
        return cfg
    if num_slices < 1:
        raise ConfigError(f"--num-slices must be >= 1, got {num_slices}")
    if cfg.mesh.dcn_data not in (1, num_slices):
        raise ConfigError(f"--num-slices {num_slices} disagrees with mesh.dcn_data={cfg.mesh.dcn_data}; "
                          "give one of them (or the same number)")
    return cfg.replace(**{"mesh.dcn_data": num_slices})


def topology_devices(topo: Topology, slices: int) -> list:
    """libtpu's compile-only devices for `slices` slices of `topo` (one device per chip)."""
    if importlib.util.find_spec("libtpu") is None:
        raise PretraxError('pretrax compile needs libtpu, the TPU compiler: pip install -e ".[tpu]"')
    # Set before libtpu loads. Other JAX processes on this machine may hold libtpu's lock file, which only
    # matters to a process that drives real chips; the rest tells libtpu the slice it would otherwise ask
    # the TPU VM's metadata server for (and complain about, off a TPU VM).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topo.name.lower().replace("v5e-", "v5litepod-"))
    from jax.experimental import topologies

    kwargs: dict[str, Any] = {"chips_per_host_bounds": topo.chips_per_host_bounds, "num_slices": slices}
    if topo.generation in ("v4", "v5p"):
        kwargs["chip_config_name"] = "megacore"  # the chip's two TensorCores act as one device
    return list(topologies.get_topology_desc(topo.libtpu_name, platform="tpu", **kwargs).devices)


def abstract_batch(setup) -> dict:
    """ShapeDtypeStructs of one global batch, sharded as the step expects (dtypes from the data pipeline)."""
    import jax

    from pretrax.data.objectives import DENOISER_FEATURES, ENCODER_DECODER_FEATURES
    from pretrax.data.packing import SEGMENT_FEATURES
    from pretrax.data.pair_packing import ENCODER_SEGMENT_FEATURES
    from pretrax.models.family import family_of
    from pretrax.train.step import batch_shardings

    cfg, family = setup.cfg, family_of(setup.cfg.model)
    dtypes = {**DENOISER_FEATURES, **ENCODER_DECODER_FEATURES, **SEGMENT_FEATURES, **ENCODER_SEGMENT_FEATURES}
    return {key: jax.ShapeDtypeStruct((cfg.train.batch_size, family.feature_length(key, cfg.data)), dtypes[key],
                                      sharding=sharding)
            for key, sharding in batch_shardings(setup).items()}


def format_report(r: dict[str, Any]) -> str:
    """The human-readable report; its last line says whether it fits, and the shortfall when it does not."""
    slices = f"{r['slices']} slices, " if r["slices"] > 1 else ""
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
    lines = [
        f"topology: {r['topology']} ({slices}{r['chips']} chips, {r['device_kind']}), mesh {mesh}",
        f"parameters: {r['parameters']:,}; tokens per step: {r['tokens_per_step']:,}; "
        f"model FLOPs per token {r['model_flops_per_token']:.4g}, per step {r['model_flops_per_step']:.4g}",
    ]
    hbm = r["hbm_gib"]
    if "memory_bytes" not in r:  # the compiler gave up
        lines.append(f"compile stopped after {r['compile_seconds']:.1f} s: {r['compiler_message']}")
        short = f"at least {r['shortfall_gib']:.2f} GiB" if r["shortfall_gib"] is not None else "more"
        lines.append(f"does not fit: {short} more per chip than the {hbm:g} GiB of HBM of a {r['device_kind']} chip")
        return "\n".join(lines)
    mem = {k: v / GIB for k, v in r["memory_bytes"].items()}
    lines += [
        f"compiled in {r['compile_seconds']:.1f} s; FLOPs per step by XLA's count: "
        f"{r['xla_flops_per_step_per_chip']:.4g} per chip (a scanned layer counted once)",
        f"per-chip memory: arguments {mem['arguments']:.2f} GiB, outputs {mem['outputs']:.2f} GiB, "
        f"aliased (donated state) -{mem['aliased']:.2f} GiB, temporaries {mem['temporaries']:.2f} GiB, "
        f"code {mem['code']:.2f} GiB",
    ]
    if r["fits"]:
        lines.append(f"fits: {mem['total']:.2f} GiB per chip of {hbm:g} GiB HBM ({hbm - mem['total']:.2f} GiB free)")
    else:
        lines.append(f"does not fit: {mem['total']:.2f} GiB per chip, {r['shortfall_gib']:.2f} GiB more than the "
                     f"{hbm:g} GiB of HBM of a {r['device_kind']} chip")
    return "\n".join(lines)


def exit_code(report: dict[str, Any]) -> int:
    return FITS if report["fits"] else DOES_NOT_FIT


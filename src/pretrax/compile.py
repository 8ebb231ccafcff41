"""`pretrax compile`: check that a config compiles and fits on a TPU topology before paying for the pod.

libtpu (`pip install -e ".[tpu]"`) describes any TPU slice as compile-only
devices, on any machine. The real train step (train/step.py) is lowered with
abstract arguments that carry their shardings on a mesh over those devices,
and the TPU compiler builds it: the per-chip memory and FLOPs it reports are
the pod's own. No parameter is ever allocated.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import tempfile
import time
from typing import Any

from pretrax.config import Config
from pretrax.errors import ConfigError, PretraxError
from pretrax.parallel.topologies import Topology, parse_topology

GIB = 2**30
FITS, DOES_NOT_FIT = 0, 3  # the CLI's exit codes


def compile_for_topology(cfg: Config, topology: str, num_slices: int | None = None,
                         top_buffers: int = 0) -> dict[str, Any]:
    """Compile cfg's train step for `num_slices` slices of `topology`; returns the numbers `pretrax compile` prints.

    top_buffers N > 0 adds the N largest temporaries live at the program's peak (`largest_temporaries`).
    """
    topo = parse_topology(topology)
    cfg = with_slices(cfg, num_slices)
    slices = cfg.mesh.dcn_data
    flags = os.environ.get("XLA_FLAGS")
    dump_dir = _dump_to_tempdir() if top_buffers else None
    try:
        return _compile_report(cfg, topo, slices, dump_dir, top_buffers)
    finally:
        if dump_dir:
            shutil.rmtree(dump_dir, ignore_errors=True)
            if flags is None:  # leave the environment as it was (libtpu has read the flags)
                del os.environ["XLA_FLAGS"]
            else:
                os.environ["XLA_FLAGS"] = flags


def _compile_report(cfg: Config, topo: Topology, slices: int, dump_dir: str | None, top_buffers: int) -> dict:
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
    if dump_dir:
        module = compiled.as_text().split(",", 1)[0].split()[-1]  # "HloModule jit_traced, ..."
        report["top_buffers"] = largest_temporaries(dump_dir, module, top_buffers)
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


def _dump_to_tempdir() -> str:
    """Have the compiler dump its buffer assignment and live ranges to a new folder; XLA_FLAGS is read once, when
    libtpu loads, so this must come first (largest_temporaries says so when it finds no dump)."""
    path = tempfile.mkdtemp(prefix="pretrax-hlo-")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={path} --xla_dump_hlo_as_text".strip()
    return path


def largest_temporaries(dump_dir: str, module: str, n: int) -> list[dict[str, Any]]:
    """The n largest temporaries live at the compiled program's peak of temporary memory, largest first.

    From the compiler's own dumps of `module`: its buffer assignment (each value's offset and padded size
    in the temporaries), live ranges (when each value lives, loop bodies included) and optimized HLO (the
    op that makes each value, and the source line it came from). A buffer that several values share in
    turn (a loop's carry and its body's parameter) is listed once, so the sizes sum to at most the
    temporaries figure.
    """
    found = sorted(glob.glob(os.path.join(dump_dir, f"module_*.{module}.*after_optimizations-live-range.txt")))
    if not found:
        raise PretraxError(f"the TPU compiler wrote no live ranges for {module}: --top-buffers needs a process "
                           "in which libtpu has not yet loaded (it reads XLA_FLAGS once)")
    prefix = found[-1][: -len("-live-range.txt")]
    values, ranges = _temporaries(_read(prefix + "-buffer-assignment.txt")), _live_ranges(_read(found[-1]))
    at_peak = _live_at_peak(values, ranges)
    ops = _ops(_read(prefix + ".txt"))
    rows = [{"name": name, "shape": shape, "dtype": shape.split("[")[0], "bytes": size,
             **ops.get(name.split("{")[0], {"op": "", "source": ""})} for name, size, shape in at_peak]
    rows.sort(key=lambda r: -r["bytes"])
    return rows[:n]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _value_name(name: str) -> str:
    return name[:-2] if name.endswith("{}") else name  # "fusion.1{}" and "fusion.1" are the same value


def _temporaries(assignment: str) -> dict[str, tuple[int, int, str, bool]]:
    """value name -> (bytes, offset, shape without layout, is a loop's phi) for the HBM temporaries' values."""
    temps, in_temp = {}, False
    for line in assignment.splitlines():
        if line.startswith("allocation "):
            attrs = line.split(",", 1)[1]
            in_temp = "preallocated-temp" in attrs and "color" not in attrs  # color 0: HBM
        elif in_temp and line.startswith(" value: "):
            m = re.match(r" value: <\d+ (\S+)( \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\): (.*)$", line)
            if m and not m.group(5).startswith("("):  # a tuple's own entry is its table of pointers
                temps[_value_name(m.group(1))] = (int(m.group(3)), int(m.group(4)),
                                                  re.sub(r"\{[^{}]*\}", "", m.group(5)), bool(m.group(2)))
    return temps


def _live_ranges(text: str) -> dict[str, tuple[int, int]]:
    """value name -> (first, last) position in the flattened schedule (loop bodies included)."""
    ranges = {}
    for m in re.finditer(r"^\s+(\S+):(\d+)-(\d+)$", text, re.M):
        ranges[_value_name(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return ranges


def _live_at_peak(values: dict, ranges: dict) -> list[tuple[str, int, str]]:
    """(name, bytes, shape) of each buffer live when the live buffers' bytes peak; a buffer (offset, size)
    shared by several values counts once, under the name of the value that makes it (not a loop's phi)."""
    lives: dict[tuple[int, int], list] = {}
    for name, (size, offset, shape, phi) in values.items():
        if name in ranges:
            lives.setdefault((offset, size), []).append((ranges[name], phi, name, shape))
    end = max((r[1] for r in ranges.values()), default=0) + 1
    usage = [0] * (end + 1)
    for (_, size), uses in lives.items():
        covered = bytearray(end + 1)
        for (first, last), *_ in uses:
            covered[first:last + 1] = b"\x01" * (last + 1 - first)
        for t in (i for i, c in enumerate(covered) if c):
            usage[t] += size
    peak = max(range(end + 1), key=usage.__getitem__)
    found = []
    for (_, size), uses in lives.items():
        live = sorted((phi, name, shape) for (first, last), phi, name, shape in uses if first <= peak <= last)
        if live:
            found.append((live[0][1], size, live[0][2]))
    return found


def _ops(hlo: str) -> dict[str, dict[str, str]]:
    """instruction name -> its op name and innermost source line (from the module's stack-frame tables)."""
    tables: dict[str, dict[int, str]] = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    table, ops = None, {}
    for line in hlo.splitlines():
        if line in tables:
            table = line
        elif table and re.match(r"\d+ ", line):
            k, v = line.split(" ", 1)
            tables[table][int(k)] = v
        elif line.startswith(("ENTRY", "%")) or " = " in line:
            table = None
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}", line)
            if m:
                op = re.search(r'op_name="([^"]*)"', m.group(2))
                frame = re.search(r"stack_frame_id=(\d+)", m.group(2))
                op = op.group(1) if op else ""
                if 'custom_call_target="AllocateBuffer"' in line:  # filled in by a while loop: a scan's outputs
                    op = f"scan outputs stacked over iterations (buffer for {op})"
                ops[m.group(1)] = {"op": op, "frame": int(frame.group(1)) if frame else 0}
    for info in ops.values():
        info["source"] = _source(tables, info.pop("frame"))
    return ops


def _source(tables: dict[str, dict[int, str]], frame: int) -> str:
    """file:line of the innermost pretrax frame of a stack (else the innermost frame); "" without one."""
    first = ""
    while frame in tables["StackFrames"]:
        loc_id, parent = map(int, re.findall(r"\d+", tables["StackFrames"][frame]))
        loc = tables["FileLocations"].get(loc_id, "")
        m = re.match(r"\{file_name_id=(\d+) function_name_id=\d+ line=(\d+)", loc)
        if m:
            path = tables["FileNames"].get(int(m.group(1)), '""').strip('"')
            where = f"{path.split('/src/')[-1] if '/src/pretrax/' in path else os.path.basename(path)}:{m.group(2)}"
            if "/pretrax/" in path:
                return where
            first = first or where
        frame = parent - 1 if parent - 1 != frame else 0  # parent ids are 1-based; 0: the outermost frame
    return first


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
    if r.get("top_buffers"):
        lines.append(f"largest temporaries live at the peak ({sum(b['bytes'] for b in r['top_buffers']) / GIB:.2f} "
                     f"GiB of {mem['temporaries']:.2f}):")
        lines += [f"  {b['bytes'] / GIB:8.3f} GiB  {b['shape']:<28} {b['op']}" + (f"  [{b['source']}]" if b["source"]
                                                                                    else "")
                  for b in r["top_buffers"]]
    if r["fits"]:
        lines.append(f"fits: {mem['total']:.2f} GiB per chip of {hbm:g} GiB HBM ({hbm - mem['total']:.2f} GiB free)")
    else:
        lines.append(f"does not fit: {mem['total']:.2f} GiB per chip, {r['shortfall_gib']:.2f} GiB more than the "
                     f"{hbm:g} GiB of HBM of a {r['device_kind']} chip")
    return "\n".join(lines)


def exit_code(report: dict[str, Any]) -> int:
    return FITS if report["fits"] else DOES_NOT_FIT


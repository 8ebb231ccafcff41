"""A roofline bound on a compiled train step's time, from what the compiler itself reports.

Three per-chip costs, each against one of the chip's peaks (parallel/topologies.py CHIP_SPECS):

  compute     XLA's FLOPs (cost_analysis "flops")             / peak bf16 FLOP/s
  memory      XLA's HBM bytes (cost_analysis "bytes accessed") / HBM bandwidth
  collectives bytes each chip sends over ICI (parsed from the
              optimized HLO: all-gather, all-reduce, reduce-scatter,
              all-to-all, collective-permute)                   / ICI bandwidth

The estimate is max(compute, memory) + collectives: compute and HBM traffic overlap within a
fusion, communication is assumed not to overlap with either (XLA's async collectives often do
overlap, so the true bound may be lower; the ranking of plans is what the search needs). It is a
bound in the sense that a chip cannot do better than its peaks: the implied MFU is an upper bound.
"""

from __future__ import annotations

import re
from typing import Any

from pretrax.parallel.topologies import ChipSpec

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# `%name = TYPE op(` or `%name = TYPE op-start(`; TYPE may be a tuple holding `/*index=5*/` comments
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.*?)\s+"
                 r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]")
_CHANNEL = re.compile(r"channel_id=(\d+)")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<used>[^}]*)\}")  # mesh['a'=4,'b'=2] {'a'}
_IOTA_GROUPS = re.compile(r"replica_groups=\[(?P<dims>[\d,]+)\]<=")  # [groups, size]<=[n]
_LIST_GROUPS = re.compile(r"replica_groups=\{\{(?P<first>[\d,]*)\}")  # {{0,1,2,3},{...}}


def array_bytes(type_text: str) -> list[float]:
    """Bytes of each array in an HLO type: 'bf16[8,64]{1,0}' -> [1024.0]; a tuple gives one per element."""
    sizes = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        sizes.append(n * _DTYPE_BYTES[dtype])
    return sizes


def group_size(line: str) -> int | None:
    """How many chips take part in each group of this collective (None: not stated)."""
    if m := _MESH_GROUPS.search(line):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m["axes"]))
        n = 1
        for axis in re.findall(r"'([^']+)'", m["used"]):
            n *= int(sizes.get(axis, 1))
        return n
    if m := _IOTA_GROUPS.search(line):
        return int(m["dims"].split(",")[-1])
    if m := _LIST_GROUPS.search(line):
        return len(m["first"].split(",")) if m["first"] else None
    return None


def collective_bytes(hlo_text: str) -> dict[str, float]:
    """Bytes each chip sends over ICI per execution of the program, by collective kind.

    Ring algorithms over a group of n chips: an all-gather sends (n-1)/n of its result, a
    reduce-scatter (n-1) times its result (= (n-1)/n of its operand), an all-reduce twice (n-1)/n
    of its size, an all-to-all (n-1)/n, a collective-permute all of it. TPU programs clone one
    collective into several fusions (async start / continuation): the same channel_id is counted
    once. A collective inside a while loop (a scanned layer) is counted once, as XLA's own cost
    analysis does; the caller corrects for loops.
    """
    totals = {kind: 0.0 for kind in COLLECTIVES}
    seen: set[tuple[str, str]] = set()
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        kind = m["op"]
        channel = _CHANNEL.search(line)
        if channel:
            if (kind, channel[1]) in seen:
                continue
            seen.add((kind, channel[1]))
        sizes = array_bytes(m["type"])
        if m["start"] and kind in ("all-gather", "collective-permute"):
            arrays = [s for s in sizes if s > 4]  # (operands..., results..., context scalars)
            sizes = arrays[len(arrays) // 2:] if len(arrays) > 1 else arrays
        size = sum(sizes)
        n = group_size(line)
        frac = (n - 1) / n if n else 1.0
        totals[kind] += {"all-gather": size * frac, "all-reduce": 2 * size * frac,
                         "reduce-scatter": size * (n - 1 if n else 1), "all-to-all": size * frac,
                         "collective-permute": size}[kind]
    return totals


def program_cost(compiled) -> dict[str, Any]:
    """Per-chip FLOPs, HBM bytes and ICI bytes (by kind) of one compiled program, loops counted once."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per program in some jax versions
    ici = collective_bytes(compiled.as_text())
    return {"flops": float(cost.get("flops", 0.0)), "hbm_bytes": float(cost.get("bytes accessed", 0.0)),
            "ici_bytes": sum(ici.values()), "ici_bytes_by_kind": ici}


def combine(base: dict[str, Any], parts: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """base + sum of weight * part, field by field (the by-kind breakdown too)."""
    out = {k: v for k, v in base.items() if k != "ici_bytes_by_kind"}
    kinds = dict(base["ici_bytes_by_kind"])
    for w, part in parts:
        for k in ("flops", "hbm_bytes", "ici_bytes"):
            out[k] += w * part[k]
        for k, v in part["ici_bytes_by_kind"].items():
            kinds[k] += w * v
    return {**out, "ici_bytes_by_kind": kinds}


def scaled(cost: dict[str, Any], k: float) -> dict[str, Any]:
    """k times every field of a cost (k micro-batches of one)."""
    zero = {"flops": 0.0, "hbm_bytes": 0.0, "ici_bytes": 0.0,
            "ici_bytes_by_kind": dict.fromkeys(cost["ici_bytes_by_kind"], 0.0)}
    return combine(zero, [(k, cost)])


def step_time(cost: dict[str, Any], spec: ChipSpec, model_flops_per_chip: float) -> dict[str, float]:
    """The roofline estimate (seconds) of one step and its parts, and the implied MFU upper bound."""
    compute = cost["flops"] / (spec.peak_tflops * 1e12)
    memory = cost["hbm_bytes"] / (spec.hbm_gbps * 1e9)
    collectives = cost["ici_bytes"] / (spec.ici_gbps * 1e9)
    estimate = max(compute, memory) + collectives
    return {"compute_s": compute, "hbm_s": memory, "collective_s": collectives, "step_s": estimate,
            "mfu_bound": model_flops_per_chip / (estimate * spec.peak_tflops * 1e12) if estimate > 0 else 0.0}


LIMITS = ("roofline bound per chip: max(XLA FLOPs / peak, XLA bytes accessed / HBM bandwidth) + ICI bytes / "
          "ICI bandwidth; communication assumed NOT overlapped with compute (async collectives may hide it); "
          "ICI bytes from the HLO's collectives with ring costs, all of a chip's links assumed usable; "
          "no DCN term across slices; no pipeline parallelism; kernel efficiency, launch and host overheads "
          "ignored; so the step time is a lower bound and the MFU an upper bound")

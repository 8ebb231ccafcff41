"""`pretrax compile CONFIG --topology T --search`: the plans that fit a TPU slice, fastest first.

A plan is a mesh (data x fsdp x tensor per slice, x expert for an MoE model, x context where --context asks to split
the sequence), a remat policy, a number of micro-batches (train.grad_accum) and an attention backend (ring only
with the sequence split). Each candidate is compiled by libtpu as
`pretrax compile` does; those that fit are ranked by a roofline bound on their step time
(pretrax.roofline) from the compiler's own cost analysis.

A full product is hundreds of compiles of minutes each, so the search prunes:
  * a mesh whose optimizer state alone, split over the axes that shard weights, exceeds HBM is
    never compiled;
  * per (mesh, attention), remat goes from least to most recompute (none, dots, attention, full)
    and stops at the first that fits: more remat only adds FLOPs, never speed, by this estimate;
  * grad_accum rises (to the next value the batch allows) only when no plan fits at the previous;
  * --max-compiles caps the compiles; the likeliest-best chains go first (fewest tensor ways,
    then least fsdp: the least communication), and what the cap leaves out is counted.
Compiles run in --jobs worker processes (spawned: a forked JAX process is not safe).

Scanned layers (model.scan_layers), grad_accum and the blocks of chunked attention and loss
(model.attention_query_chunk, train.loss_chunk) are while loops, whose body XLA's cost analysis
counts once. A fitting plan's costs therefore come from two (three for an encoder-decoder of
unequal depths) cheap compiles of the same plan unscanned at depth 1 and 2 with one micro-batch
and its blocks unrolled: total = accum x (cost(1) + (L - 1) x (cost(2) - cost(1))).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import math
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from typing import Any

from pretrax.config import Config
from pretrax.errors import ConfigError, first_line
from pretrax.parallel.topologies import Topology, parse_topology
from pretrax.roofline import LIMITS, combine, program_cost, scaled, step_time

GIB = 2**30
REMATS = ("none", "dots", "attention", "full")  # least to most recompute
ATTENTIONS = ("xla", "splash", "ring")  # the TPU backends (cudnn is GPU only; ring needs a context axis)


@dataclasses.dataclass(frozen=True)
class Plan:
    data: int
    fsdp: int
    tensor: int
    remat: str
    grad_accum: int
    attention: str
    expert: int = 1  # ways the experts of an MoE model are split (1 for a dense model)
    context: int = 1  # ways the sequence is split

    def overrides(self) -> dict[str, Any]:
        return {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor, "mesh.expert": self.expert,
                "mesh.context": self.context, "model.remat": self.remat, "train.grad_accum": self.grad_accum,
                "model.attention": self.attention}

    @property
    def mesh(self) -> str:
        return (f"{self.data}x{self.fsdp}x{self.tensor}" + (f" expert {self.expert}" if self.expert > 1 else "")
                + (f" context {self.context}" if self.context > 1 else ""))

    def label(self) -> str:
        return f"mesh {self.mesh} remat {self.remat} accum {self.grad_accum} attention {self.attention}"


@dataclasses.dataclass(frozen=True)
class Space:
    """What the search may try; None: every value that makes sense for the config and topology."""

    data: tuple[int, ...] | None = None
    fsdp: tuple[int, ...] | None = None
    tensor: tuple[int, ...] | None = None
    remat: tuple[str, ...] = REMATS
    grad_accum: tuple[int, ...] | None = None
    attention: tuple[str, ...] | None = None
    expert: tuple[int, ...] | None = None
    context: tuple[int, ...] | None = None  # None: the sequence whole (1)


def parse_space(data: str | None = None, fsdp: str | None = None, tensor: str | None = None,
                remat: str | None = None, grad_accum: str | None = None, attention: str | None = None,
                expert: str | None = None, context: str | None = None) -> Space:
    """The CLI's comma lists (`--tensor 1,2,4`) as a Space; one-line ConfigErrors for bad values."""
    def ints(flag, text):
        if text is None:
            return None
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise ConfigError(f"--{flag} takes positive integers separated by commas, got {text!r}")
        return values

    def names(flag, text, valid):
        if text is None:
            return None
        values = tuple(v.strip() for v in text.split(","))
        bad = [v for v in values if v not in valid]
        if bad:
            raise ConfigError(f"--{flag} {bad[0]!r} is not one of {', '.join(valid)}")
        return values

    return Space(ints("data", data), ints("fsdp", fsdp), ints("tensor", tensor),
                 names("remat", remat, REMATS) or REMATS, ints("grad-accum", grad_accum),
                 names("attention", attention, ATTENTIONS), ints("expert", expert), ints("context", context))


# ---------------------------------------------------------------- the candidates


def candidate_meshes(cfg: Config, topo: Topology, space: Space) -> list[tuple[int, int, int, int, int]]:
    """(data, fsdp, tensor, expert, context) per slice multiplying to the slice's chips, tensor dividing the (kv)
    heads and d_ff, expert dividing model.moe.num_experts (1 for a dense model), context the sequence lengths."""
    n, m = topo.chips, cfg.model
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    for flag, values in (("data", space.data), ("fsdp", space.fsdp), ("tensor", space.tensor),
                         ("expert", space.expert), ("context", space.context)):
        for v in values or ():
            if n % v:
                raise ConfigError(f"--{flag} {v} does not divide the {n} chips of a {topo.name} slice; "
                                  f"valid: {', '.join(map(str, divisors))}")
    kv = m.n_kv_heads or m.n_heads
    for v in space.tensor or ():
        if m.n_heads % v or kv % v or m.d_ff % v:
            raise ConfigError(f"--tensor {v} does not divide model.n_heads={m.n_heads}, the {kv} kv heads and "
                              f"model.d_ff={m.d_ff}; tensor parallelism splits heads and the MLP")
    for v in space.expert or ():
        if v > 1 and (not m.moe.num_experts or m.moe.num_experts % v):
            raise ConfigError(f"--expert {v} does not divide model.moe.num_experts={m.moe.num_experts}; expert "
                              "parallelism splits the experts of an MoE model")
    lengths = sequence_lengths(cfg)
    for v in space.context or ():
        if any(length % v for length in lengths.values()):
            raise ConfigError(f"--context {v} does not divide the sequence lengths "
                              f"({', '.join(f'{k}={x}' for k, x in lengths.items())}); context parallelism splits them")
    experts = [e for e in divisors if m.moe.num_experts and m.moe.num_experts % e == 0] or [1]
    meshes = []
    for t, f, e, c in itertools.product(divisors, divisors, experts, space.context or (1,)):
        if n % (t * f * e * c):
            continue
        d = n // (t * f * e * c)
        if m.n_heads % t or kv % t or m.d_ff % t or m.d_model % f:
            continue
        if all(vals is None or v in vals
               for v, vals in ((d, space.data), (f, space.fsdp), (t, space.tensor), (e, space.expert))):
            meshes.append((d, f, t, e, c))
    if not meshes:
        axes = "data x fsdp x tensor" + (" x expert" if m.moe.num_experts else "")
        raise ConfigError(f"no mesh in the search space has {axes} = {n} chips of {topo.name} with tensor dividing "
                          f"the heads; widen --{axes.replace(' x ', '/--')}")
    # least communication first: fewest tensor ways (activations cross chips in every layer), then fewest context
    # ways (keys and values cross chips in every layer), then least fsdp, then the most expert ways (each expert's
    # weights on fewer chips)
    return sorted(meshes, key=lambda dftec: (dftec[2], dftec[4], dftec[1], -dftec[3]))


def sequence_lengths(cfg: Config) -> dict[str, int]:
    """The lengths a context axis must divide: data.seq_len, or an encoder-decoder's two."""
    d = cfg.data
    if cfg.model.kind == "encoder_decoder":
        return {"data.inputs_len": d.inputs_len or d.seq_len, "data.targets_len": d.targets_len or d.seq_len}
    return {"data.seq_len": d.seq_len}


def attentions_for(mesh: tuple[int, ...], attentions: list[str]) -> list[str]:
    """The backends worth a compile on this mesh: ring only with the sequence split (else it is xla)."""
    return [a for a in attentions if a != "ring" or mesh[4] > 1]


def candidate_accums(cfg: Config, space: Space) -> list[int]:
    batch = cfg.train.batch_size
    for v in space.grad_accum or ():
        if batch % v:
            raise ConfigError(f"--grad-accum {v} does not divide train.batch_size={batch}")
    return sorted(space.grad_accum or [a for a in range(1, batch + 1) if batch % a == 0])


def candidate_attentions(cfg: Config, space: Space) -> list[str]:
    from pretrax.train.state import check_attention

    usable = []
    for name in ATTENTIONS:
        try:
            check_attention(cfg.replace(**{"model.attention": name}), "tpu")
            usable.append(name)
        except ConfigError as e:
            if space.attention and name in space.attention:
                raise ConfigError(f"--attention {name}: {e}") from None
    return [a for a in usable if not space.attention or a in space.attention]


def weight_ways(cfg: Config, d: int, f: int, t: int, e: int = 1, c: int = 1) -> int:
    """The most chips any weight is split over: the mesh axes the weight axes' rules name."""
    sizes = {"data": d, "fsdp": f, "tensor": t, "expert": e, "context": c}
    used = set()
    for logical, target in cfg.mesh.rules.items():
        if logical in ("batch", "length") or logical.startswith("act_"):
            continue
        used.update(x for x in (target if isinstance(target, (list, tuple)) else [target]) if x)
    return math.prod(sizes[a] for a in used)


def state_bytes(cfg: Config, vocab: int) -> int:
    """Bytes of the whole train state (parameters, optimizer), from shapes alone."""
    import jax

    from pretrax.parallel.mesh import make_mesh
    from pretrax.train.state import make_setup

    one = cfg.replace(**{"mesh.data": 1, "mesh.fsdp": 1, "mesh.expert": 1, "mesh.context": 1, "mesh.tensor": 1,
                         "mesh.dcn_data": 1,
                         "model.attention": "xla"})  # the backend changes no state
    setup = make_setup(one, make_mesh(one.mesh, jax.devices()[:1]), vocab)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state()))


# ---------------------------------------------------------------- one plan (in a worker)

_DEVICES: dict[tuple[str, int], list] = {}


def _devices(topo: Topology, slices: int) -> list:
    from pretrax.compile import topology_devices

    key = (topo.name, slices)
    if key not in _DEVICES:
        _DEVICES[key] = topology_devices(topo, slices)
    return _DEVICES[key]


def _compile(cfg: Config, devices: list):
    from pretrax.compile import abstract_batch
    from pretrax.plan import make_plan
    from pretrax.train.step import make_train_step

    setup = make_plan(cfg, devices=devices).setup
    return make_train_step(setup).lower(setup.abstract_state(), abstract_batch(setup)).compile()


def depth_keys(cfg: Config) -> dict[str, int]:
    """The config keys whose value is a stack's depth, and their values."""
    from pretrax.models.family import family_of

    return family_of(cfg.model).depth_keys(cfg.model)


def has_loops(compiled) -> bool:
    """Whether the compiled program holds a while loop, whose body its cost analysis counts once."""
    return re.search(r" while\(", compiled.as_text()) is not None


def step_cost(cfg: Config, devices: list, compiled=None) -> tuple[dict[str, Any], int]:
    """Per-chip FLOPs, HBM and ICI bytes of one whole step, loops unrolled by arithmetic; and the compiles it took.

    Without loops (unscanned, one micro-batch, no attention or loss in blocks: no while loop in the
    compiled program) the plan's own program is exact. Otherwise the same plan is compiled unscanned
    with one micro-batch, its blocks unrolled (models.block_map), at depth 1, and at depth 2 per
    stack: total = accum x (cost(1) + sum over stacks of (L - 1) x (cost(2) - cost(1))). This counts
    the optimizer update once per micro-batch (accum - 1 times too often).
    """
    from pretrax.models.block_map import unrolled

    accum = cfg.train.grad_accum
    if compiled is not None and not has_loops(compiled):
        return program_cost(compiled), 0
    depths = depth_keys(cfg)
    micro = {"model.scan_layers": False, "train.grad_accum": 1, "train.batch_size": cfg.train.batch_size // accum}
    ones = {k: 1 for k in depths}
    parts = []
    with unrolled():
        base = program_cost(_compile(cfg.replace(**micro, **ones), devices))
        for key, depth in depths.items():
            two = program_cost(_compile(cfg.replace(**micro, **{**ones, key: 2}), devices))
            body = {k: two[k] - base[k] for k in ("flops", "hbm_bytes", "ici_bytes")}
            body["ici_bytes_by_kind"] = {k: two["ici_bytes_by_kind"][k] - v
                                         for k, v in base["ici_bytes_by_kind"].items()}
            parts.append((depth - 1, body))
    return scaled(combine(base, parts), accum), 1 + len(parts)


def evaluate(cfg_dict: dict, topology: str, slices: int, plan: Plan, model_flops_per_chip: float) -> dict[str, Any]:
    """Compile one plan: per-chip memory and whether it fits; for a plan that fits, its roofline estimate."""
    import jax

    from pretrax import config as config_lib
    from pretrax.compile import memory_of, out_of_memory

    topo = parse_topology(topology)
    cfg = config_lib.from_dict(cfg_dict).replace(**plan.overrides())
    row: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
    start = time.perf_counter()
    try:
        devices = _devices(topo, slices)
        compiled = _compile(cfg, devices)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            return {**row, "status": "refused", "reason": first_line(e)}
        oom = out_of_memory(str(e), topo.hbm_gib)
        return {**row, "status": "too_big", "fits": False, "total_gib": oom["needed_gib"], "at_least": True,
                "compile_seconds": _since(start)}
    except (ConfigError, ValueError, TypeError) as e:  # a sharding the shapes do not divide, a bad batch split
        return {**row, "status": "refused", "reason": first_line(e)}
    memory = memory_of(compiled)
    total = memory["total"] / GIB
    row.update(memory_bytes=memory, total_gib=round(total, 3), at_least=False, fits=total <= topo.hbm_gib,
               compile_seconds=_since(start))
    if not row["fits"]:
        return {**row, "status": "too_big"}
    try:
        cost, extra = step_cost(cfg, devices, compiled)
    except (jax.errors.JaxRuntimeError, ConfigError, ValueError, TypeError) as e:  # it fits; only the estimate is lost
        return {**row, "status": "fits", "step_s": None, "cost_error": first_line(e), "seconds": _since(start)}
    estimate = step_time(cost, topo.spec, model_flops_per_chip)
    return {**row, "status": "fits", "cost": cost, "cost_compiles": extra, **estimate, "seconds": _since(start)}


def _progress(n: int, budget: int, plan: Plan, row: dict[str, Any]) -> None:
    """One line on stderr per compiled plan: a search of big models takes minutes per compile."""
    what = row["status"] if row.get("total_gib") is None else f"{row['status']}, {row['total_gib']:.2f} GiB per chip"
    if row["status"] == "refused":
        what += f": {row['reason']}"
    print(f"[{n}/{budget}] {plan.label()}: {what}", file=sys.stderr, flush=True)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------- the search


@dataclasses.dataclass
class _Chain:
    """One (mesh, attention, grad_accum): its remat ladder, tried in order until one fits."""

    mesh: tuple[int, int, int, int, int]  # data, fsdp, tensor, expert, context
    attention: str
    accum: int
    remats: list[str]

    def plan(self) -> Plan:
        d, f, t, e, c = self.mesh
        return Plan(d, f, t, self.remats[0], self.accum, self.attention, e, c)


def search(cfg: Config, topology: str, num_slices: int | None = None, space: Space = Space(),
           max_compiles: int = 24, jobs: int | None = None, evaluate_fn=None) -> dict[str, Any]:
    """Try the plans of `space` on `topology`; returns the report `--search` prints (plans that fit, best first).

    evaluate_fn(cfg_dict, topology, slices, plan, model_flops_per_chip) -> row: `evaluate` unless given
    (a module-level function, so that worker processes can import it).
    """
    from pretrax.compile import with_slices
    from pretrax.data.tokenizer import config_tokenizer
    from pretrax.flops import step_flops
    from pretrax.sizes import resolve_sizes

    topo = parse_topology(topology)
    cfg = with_slices(cfg, num_slices)
    if max_compiles < 1:
        raise ConfigError(f"--max-compiles must be >= 1, got {max_compiles}")
    jobs = max(1, (os.cpu_count() or 2) // 2) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    slices = cfg.mesh.dcn_data
    meshes = candidate_meshes(cfg, topo, space)
    accums = candidate_accums(cfg, space)
    attentions = candidate_attentions(cfg, space)
    if not attentions:
        raise ConfigError("no attention backend in --attention can run this model on TPU")
    if not any(attentions_for(m, attentions) for m in meshes):
        raise ConfigError("--attention ring passes keys and values around a context axis: add --context C with C > 1")
    vocab = resolve_sizes(cfg, config_tokenizer(cfg.data).vocab_size).vocab_size
    flops = step_flops(cfg, vocab)
    chips = topo.chips * slices
    state = state_bytes(cfg, vocab)
    space_size = sum(len(attentions_for(m, attentions)) for m in meshes) * len(space.remat) * len(accums)
    counts = {"space": space_size, "compiled": 0, "cost_compiles": 0, "refused": 0,
              "pruned_state": 0, "pruned_remat": 0, "pruned_accum": 0, "pruned_batch": 0, "budget": 0}

    def batch_ok(mesh, accum):
        return (cfg.train.batch_size // accum) % (mesh[0] * mesh[1] * mesh[3] * slices) == 0

    viable = []
    for mesh in meshes:
        if state / weight_ways(cfg, *mesh) > topo.hbm_gib * GIB:
            counts["pruned_state"] += len(attentions_for(mesh, attentions)) * len(space.remat) * len(accums)
        else:
            viable.append(mesh)

    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    pool = None if jobs == 1 else cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        for i, accum in enumerate(accums):
            if any(r["status"] == "fits" for r in results):
                counts["pruned_accum"] += (sum(len(attentions_for(m, attentions)) for m in viable) * len(space.remat)
                                           * (len(accums) - i))
                break
            chains = deque()
            for mesh, attention in ((m, a) for m in viable for a in attentions_for(m, attentions)):
                if batch_ok(mesh, accum):
                    chains.append(_Chain(mesh, attention, accum, list(space.remat)))
                else:
                    counts["pruned_batch"] += len(space.remat)
            _run_chains(chains, cfg, topo, slices, flops.total / chips, pool, jobs, max_compiles, counts, results,
                        evaluate_fn or evaluate)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    fitting = sorted((r for r in results if r["status"] == "fits"),
                     key=lambda r: (r["step_s"] is None, r["step_s"] or 0.0))  # no estimate: last
    seen = [r for r in results if r.get("total_gib") is not None]
    smallest = min(seen, key=lambda r: r["total_gib"]) if seen else None
    return {
        "topology": topo.name, "slices": slices, "chips": chips, "hbm_gib": topo.hbm_gib,
        "chip": dataclasses.asdict(topo.spec), "parameters_state_gib": round(state / GIB, 3),
        "model_flops_per_step": flops.total, "tokens_per_step": flops.tokens, "jobs": jobs,
        "max_compiles": max_compiles, "counts": counts, "seconds": _since(start),
        "plans": fitting, "not_fitting": [r for r in results if r["status"] != "fits"],
        "smallest": smallest, "limits": LIMITS,
    }


def _run_chains(chains: deque, cfg: Config, topo: Topology, slices: int, model_flops_per_chip: float, pool,
                jobs: int, max_compiles: int, counts: dict, results: list, evaluate_fn) -> None:
    """Compile each chain's next remat until one fits, `jobs` at a time, within the compile budget."""
    cfg_dict = cfg.to_dict()
    running: dict[Any, _Chain] = {}

    def submit(chain):
        args = (cfg_dict, topo.name, slices, chain.plan(), model_flops_per_chip)
        counts["compiled"] += 1
        if pool is None:
            done = cf.Future()
            done.set_result(evaluate_fn(*args))
            running[done] = chain
        else:
            running[pool.submit(evaluate_fn, *args)] = chain

    while chains or running:
        while chains and len(running) < jobs:
            if counts["compiled"] >= max_compiles:
                counts["budget"] += sum(len(c.remats) for c in chains)
                chains.clear()
                break
            submit(chains.popleft())
        if not running:
            break
        finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            chain = running.pop(future)
            row = future.result()
            results.append(row)
            counts["cost_compiles"] += row.get("cost_compiles", 0)
            _progress(len(results), max_compiles, chain.plan(), row)
            if row["status"] == "refused":
                counts["refused"] += 1
                counts["pruned_remat"] += len(chain.remats) - 1  # the same mesh fails the same way
            elif row["status"] == "fits":
                counts["pruned_remat"] += len(chain.remats) - 1
            elif len(chain.remats) > 1:
                chain.remats.pop(0)
                chains.appendleft(chain)  # its next remat before any new chain: the likeliest fit soonest


# ---------------------------------------------------------------- output


def format_search(r: dict[str, Any]) -> str:
    c, spec = r["counts"], r["chip"]
    slices = f"{r['slices']} slices, " if r["slices"] > 1 else ""
    pruned = c["pruned_state"] + c["pruned_remat"] + c["pruned_accum"] + c["pruned_batch"]
    lines = [
        f"search on {r['topology']} ({slices}{r['chips']} chips; per chip {r['hbm_gib']:g} GiB HBM, "
        f"{spec['peak_tflops']:g} TFLOP/s bf16, {spec['hbm_gbps']:g} GB/s HBM, {spec['ici_gbps']:g} GB/s ICI); "
        f"train state {r['parameters_state_gib']:.2f} GiB in all",
        f"{c['space']} plans in the space: {c['compiled']} compiled (+{c['cost_compiles']} small cost compiles), "
        f"{pruned} skipped by pruning (state alone over HBM {c['pruned_state']}, more remat after a fit "
        f"{c['pruned_remat']}, grad_accum after a fit {c['pruned_accum']}, batch not divisible {c['pruned_batch']}), "
        f"{c['budget']} left out by --max-compiles {r['max_compiles']}; {c['refused']} refused by the compiler; "
        f"{r['jobs']} jobs, {r['seconds']:.0f} s",
    ]
    if r["plans"]:
        lines.append(f"{len(r['plans'])} plans fit, best first:")
        header = ("mesh d x f x t", "remat", "accum", "attention", "GiB/chip", "step ms",
                  "compute/HBM/ICI ms", "MFU bound")
        table = [header] + [
            (Plan(**p["plan"]).mesh, p["plan"]["remat"], str(p["plan"]["grad_accum"]), p["plan"]["attention"],
             f"{p['total_gib']:.3f}", *_estimate_cells(p)) for p in r["plans"]]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.append(f"model: {r['limits']}")
    if not r["plans"]:
        s = r["smallest"]
        if s is None:
            lines.append("nothing fits: no plan compiled (all refused or left out); widen the search or --max-compiles")
        else:
            least = "at least " if s["at_least"] else ""
            lines.append(f"nothing fits: the smallest per-chip total seen is {least}{s['total_gib']:.2f} GiB "
                         f"(of {r['hbm_gib']:g} GiB HBM), on {Plan(**s['plan']).label()}")
    return "\n".join(lines)


def _estimate_cells(p: dict[str, Any]) -> tuple[str, str, str]:
    if p["step_s"] is None:
        return "-", f"no estimate: {p['cost_error'][:60]}", "-"
    return (f"{p['step_s'] * 1e3:.4g}",
            f"{p['compute_s'] * 1e3:.3g}/{p['hbm_s'] * 1e3:.3g}/{p['collective_s'] * 1e3:.3g}",
            f"{p['mfu_bound']:.1%}")


def exit_code(report: dict[str, Any]) -> int:
    from pretrax.compile import DOES_NOT_FIT, FITS

    return FITS if report["plans"] else DOES_NOT_FIT

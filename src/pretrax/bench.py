"""`pretrax bench`: how fast a config trains here, against the device's peak.

Builds the run's real state, train step and batches (the same pieces as
`pretrax train`, without checkpoints, eval or metrics files), then measures:

  compile    lowering + XLA compilation of the train step, timed alone
  warm-up    `warmup` steps, not timed (first-run allocations, caches)
  steps      `steps` steps dispatched back to back, as training runs them,
             timed from the first dispatch until the last result is ready

Batches are built and placed on the devices before any timing, so the input
pipeline is not measured (benchmarks/data_throughput.py measures that).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax

from pretrax.config import Config
from pretrax.data.pipeline import make_train_iterator
from pretrax.errors import ConfigError
from pretrax.flops import attention_note
from pretrax.perf import check_peak, device_peak, flop_rates
from pretrax.plan import make_plan
from pretrax.train.state import init_state
from pretrax.train.step import make_train_step, to_global

DISTINCT_BATCHES = 8  # the timed steps cycle over this many real batches (the cost does not depend on the data)


def run_bench(cfg: Config, *, steps: int = 10, warmup: int = 2, compile_only: bool = False) -> dict[str, Any]:
    """Time `steps` train steps of cfg after compiling and `warmup` steps; returns the figures.

    compile_only: compile against the state's shapes (no memory for it is allocated) and stop;
    the way to time the compilation of a model too big to run here.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    check_peak(cfg.train.peak)
    plan = make_plan(cfg)
    setup, flops, mesh = plan.setup, plan.flops, plan.mesh

    data = make_train_iterator(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    try:
        batches = [to_global(setup, next(data)) for _ in range(min(steps + warmup, DISTINCT_BATCHES))]
    finally:
        data.close()
    state = setup.abstract_state() if compile_only else init_state(setup, cfg.run.seed)

    t0 = time.perf_counter()
    train_step = make_train_step(setup).lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    result = {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "mesh": dict(mesh.shape),
        "params": plan.params,
        "batch_size": cfg.train.batch_size,
        "tokens_per_step": flops.tokens,
        "flops_per_step": flops.total,
        "flops_per_token": flops.per_token,
        "mfu_attention": flops.convention,  # train.mfu_attention: what the FLOPs, TFLOP/s and MFU count
        "compile_s": compile_s,
    }
    if compile_only:
        return result
    peak = device_peak(cfg.train.peak)  # measure: timed here, before the steps, on the same device

    metrics = None
    for i in range(warmup):
        state, metrics = train_step(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = train_step(state, batches[(warmup + i) % len(batches)])
    jax.block_until_ready((state, metrics))
    step_time = (time.perf_counter() - t0) / steps

    rates = flop_rates(flops.total / step_time, jax.device_count(), peak, flops.convention)
    return {
        **result,
        "steps": steps,
        "warmup": warmup,
        "step_time_s": step_time,
        "tokens_per_s": flops.tokens / step_time,
        "tflops_per_device": rates["tflops_per_device"],
        "peak_tflops": peak.tflops,
        "peak_source": peak.source,
        "mfu": rates.get("mfu"),
        "peak_memory_bytes": peak_memory_bytes(),
        "final_loss": float(metrics["loss"]),
    }


def peak_memory_bytes() -> int | None:
    """The most memory any local device has held so far, or None where the backend does not say (CPU)."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(int(s["peak_bytes_in_use"]) for s in stats)


def format_bench(r: dict[str, Any]) -> str:
    note = f"{attention_note(r['mfu_attention'])}; train.mfu_attention={r['mfu_attention']}"
    head = [
        f"devices: {r['devices']} x {r['device_kind']}, mesh {r['mesh']}",
        (f"parameters: {r['params']:,}; tokens per step: {r['tokens_per_step']:,}; "
         f"FLOPs per step: {r['flops_per_step']:.4g} ({note})"),
        f"compile: {r['compile_s']:.2f} s",
    ]
    if "step_time_s" not in r:  # --compile-only
        return "\n".join(head)
    mfu = (f"{r['mfu']:.2%} of {r['peak_tflops']:.4g} TFLOP/s ({r['peak_source']}; {note})" if r["mfu"] is not None
           else f"n/a ({r['peak_source']})")
    memory = (f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] is not None
              else "n/a (the backend reports no memory statistics)")
    return "\n".join(head + [
        f"step time: {r['step_time_s'] * 1e3:.1f} ms (mean of {r['steps']} steps after {r['warmup']} warm-up)",
        f"tokens/s: {r['tokens_per_s']:,.0f}",
        f"TFLOP/s per device: {r['tflops_per_device']:.4g} ({note})",
        f"MFU: {mfu}",
        f"peak device memory: {memory}",
        f"loss after the last step: {r['final_loss']:.4f}"
        + ("" if math.isfinite(r["final_loss"]) else " (not finite)"),
    ])

"""A device's peak FLOP/s and the model FLOPs utilisation (MFU) measured against it.

MFU = model FLOPs per second per device / peak FLOPs per second per device,
with model FLOPs from pretrax.flops under `train.mfu_attention` (full: causal
attention counted in full as PaLM does, the default; causal: halved), which
every MFU figure names. The peak comes from `train.peak`:

  auto     the bf16 dense peak of the device kind, from PEAKS; a device not in
           the table (a CPU) gets no MFU, never a guess
  measure  the best bf16 or f32 matmul throughput of this device, timed once
           per process (the honest reference where no datasheet applies)
  <number> TFLOP/s per device, given by the user
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import jax
import jax.numpy as jnp

from pretrax.config import check_peak  # noqa: F401 (train.peak's check lives with the other config checks)

# bf16 dense TFLOP/s per device (datasheets; no sparsity). First match on the
# lower-cased jax device_kind wins, so the more specific patterns come first.
PEAKS: tuple[tuple[str, float], ...] = (
    (r"h100 pcie", 756.0),  # the PCIe card clocks lower than the SXM part
    (r"h100|h200", 989.0),
    (r"a100", 312.0),
    (r"tpu v4(?! lite)", 275.0),
    (r"tpu v5 ?(lite|e)\b", 197.0),  # jax names v5e "TPU v5 lite"
    (r"tpu v5p?\b", 459.0),  # and v5p "TPU v5"
    (r"tpu v6 ?(lite|e)\b", 918.0),  # v6e (Trillium) "TPU v6 lite"
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """Per-device peak in TFLOP/s (None: unknown, so no MFU) and where it came from."""

    tflops: float | None
    source: str

    def describe(self) -> str:
        if self.tflops is None:
            return f"peak: unknown ({self.source}): no MFU reported"
        return f"peak: {self.tflops:.4g} TFLOP/s per device ({self.source})"


def table_peak(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((tflops for pattern, tflops in PEAKS if re.search(pattern, kind)), None)


@functools.cache
def device_peak(spec: str = "auto") -> Peak:
    """The peak train.peak names; cached, so `measure` runs once per process."""
    spec = check_peak(spec)
    kind = jax.devices()[0].device_kind
    if spec == "auto":
        tflops = table_peak(kind)
        if tflops is None:
            return Peak(None, f"device kind {kind!r} is not in the peak table; set train.peak=measure or a number")
        return Peak(tflops, f"bf16 dense, {kind}")
    if spec == "measure":
        n, by_dtype = measure_matmul_peak()
        best = max(by_dtype, key=by_dtype.get)
        each = ", ".join(f"{d} {t:.4g}" for d, t in by_dtype.items())
        return Peak(by_dtype[best], f"measured: best of {n}x{n} matmuls on {kind}, TFLOP/s {each}")
    return Peak(float(spec), "train.peak")


def measure_matmul_peak(n: int | None = None, seconds: float = 0.3) -> tuple[int, dict[str, float]]:
    """(n, {dtype name: TFLOP/s}): the throughput of a bf16 and an f32 n x n matmul on the first device.

    Each dtype is timed over enough back-to-back matmuls to take about `seconds`,
    three times; the best round counts (others sharing the machine only slow it).
    """
    device = jax.devices()[0]
    n = n or (1024 if device.platform == "cpu" else 8192)
    by_dtype = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        keys = jax.random.split(jax.random.key(0))
        a, b = (jax.device_put(jax.random.normal(k, (n, n), dtype) / n**0.5, device) for k in keys)
        matmul = jax.jit(jnp.matmul)
        matmul(a, b).block_until_ready()  # compile
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        reps = max(1, min(1000, int(seconds / max(time.perf_counter() - t0, 1e-6))))
        rounds = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):  # queued back to back; each result is freed once the next replaces it
                out = matmul(a, b)
            out.block_until_ready()  # one device stream runs them in order: the last done means all done
            rounds.append(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
        by_dtype[jnp.dtype(dtype).name] = max(rounds)
    return n, by_dtype


def flop_rates(model_flops_per_s: float, n_devices: int, peak: Peak,
               attention: str | None = None) -> dict[str, float | str]:
    """The throughput fields of a log row: model_flops_per_s, tflops_per_device, (peak known) mfu, and
    mfu_attention, the FLOP convention they count (train.mfu_attention), when given."""
    per_device = model_flops_per_s / n_devices / 1e12
    row: dict[str, float | str] = {"model_flops_per_s": model_flops_per_s, "tflops_per_device": per_device}
    if peak.tflops is not None:
        row["mfu"] = per_device / peak.tflops
    if attention is not None:
        row["mfu_attention"] = attention
    return row

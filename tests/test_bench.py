"""Speed reporting: `pretrax bench`, per-device peaks and MFU in the training logs, bf16 Adam moments."""

import json
import os

import jax
import jax.numpy as jnp
import pytest
from conftest import TINY

from pretrax import config as config_lib
from pretrax.bench import format_bench
from pretrax.cli import main
from pretrax.errors import ConfigError
from pretrax.flops import step_flops
from pretrax.parallel.mesh import make_mesh
from pretrax.perf import device_peak, flop_rates, table_peak
from pretrax.train.loop import train
from pretrax.train.metrics import ProgressLines
from pretrax.train.state import make_setup


@pytest.mark.slow
@pytest.mark.devices(8)
def test_bench_json_figures_are_present_positive_and_consistent(capsys):
    # the model of benchmarks/configs/tiny.yaml with the tiny test shapes, plus the memory knobs
    overrides = TINY + ["model.remat=attention", "optim.mu_dtype=bfloat16"]
    code = main(["bench", "benchmarks/configs/tiny.yaml", *overrides, "--steps", "2", "--warmup", "1",
                 "--peak", "measure", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    cfg = config_lib.load("benchmarks/configs/tiny.yaml", overrides)
    flops = step_flops(cfg, 384)
    assert r["devices"] == jax.device_count() == 8 and r["steps"] == 2 and r["warmup"] == 1
    assert r["tokens_per_step"] == cfg.train.batch_size * cfg.data.seq_len == flops.tokens
    assert r["flops_per_step"] == flops.total
    for key in ("params", "compile_s", "step_time_s", "tokens_per_s", "tflops_per_device", "peak_tflops", "mfu"):
        assert r[key] > 0, key
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
    assert r["tflops_per_device"] == pytest.approx(r["flops_per_step"] / r["step_time_s"] / 8 / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops_per_device"] / r["peak_tflops"])
    assert r["peak_source"].startswith("measured")
    assert r["peak_memory_bytes"] is None  # the CPU backend keeps no memory statistics: n/a, not 0
    assert jnp.isfinite(r["final_loss"])


def test_bench_compile_only_times_the_compilation_without_a_model_in_memory(capsys):
    assert main(["bench", "benchmarks/configs/tiny.yaml", *TINY, "model.scan_layers=true", "--compile-only",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["compile_s"] > 0 and r["params"] > 0
    assert "step_time_s" not in r and "mfu" not in r
    assert r["mfu_attention"] == "full"  # the FLOP convention the figures count, PaLM's by default


@pytest.mark.parametrize("convention, words", [("full", "attention counted in full, as PaLM"),
                                               ("causal", "causal attention counted as half")])
def test_bench_output_names_the_attention_convention_of_every_flop_figure(convention, words):
    r = {"devices": 8, "device_kind": "cpu", "mesh": {"data": 8}, "params": 1000, "tokens_per_step": 64,
         "flops_per_step": 1e9, "mfu_attention": convention, "compile_s": 1.0, "steps": 2, "warmup": 1,
         "step_time_s": 0.5, "tokens_per_s": 128.0, "tflops_per_device": 0.25, "peak_tflops": 0.5,
         "peak_source": "train.peak", "mfu": 0.5, "peak_memory_bytes": None, "final_loss": 5.0}
    lines = format_bench(r).splitlines()
    named = f"{words}; train.mfu_attention={convention}"
    for start in ("parameters:", "TFLOP/s per device:", "MFU:"):
        assert named in next(line for line in lines if line.startswith(start)), start
    assert f"MFU: 50.00% of 0.5 TFLOP/s (train.peak; {named})" in lines


@pytest.mark.parametrize("convention, shown", [("full", "MFU 42.1% (attention full)"),
                                               ("causal", "MFU 42.1% (causal attention half)")])
def test_progress_lines_name_the_mfu_convention(convention, shown):
    row = {"step": 60, "loss": 1.0, "tokens_per_s": 1000.0, "mfu": 0.421, "mfu_attention": convention}
    assert f" | {shown} | " in ProgressLines(total_steps=100, start_step=40).line(row)


def test_bench_refuses_bad_arguments_in_one_line(capsys):
    assert main(["bench", "benchmarks/configs/tiny.yaml", *TINY, "--steps", "0"]) == 2
    assert main(["bench", "benchmarks/configs/tiny.yaml", *TINY, "--peak", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--steps >= 1" in err[0] and "train.peak must be" in err[1]


@pytest.mark.slow
def test_training_logs_carry_tflops_per_device_and_mfu(tiny_cfg, capsys):
    cfg = tiny_cfg("train.steps=2", "train.peak=50", "train.mfu_attention=causal")
    train(cfg, progress=False)
    with open(os.path.join(cfg.run.dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    fpt = step_flops(cfg, 384).per_token
    assert fpt < step_flops(cfg, 384, attention="full").per_token  # the setting reaches the logged figures
    for row in rows:
        assert row["model_flops_per_s"] == pytest.approx(row["tokens_per_s"] * fpt)
        assert row["tflops_per_device"] == pytest.approx(row["model_flops_per_s"] / 8 / 1e12)
        assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 50)
        assert row["mfu_attention"] == "causal"
    out = capsys.readouterr().out
    assert f"FLOPs per token: {fpt:.3g} (causal attention counted as half; train.mfu_attention=causal)" in out
    assert "% (causal attention half) | elapsed" in out  # the progress line of each logged step


def test_peak_comes_from_the_table_a_number_or_nowhere():
    assert table_peak("NVIDIA H100 80GB HBM3") == table_peak("NVIDIA H200") == 989
    assert table_peak("NVIDIA A100-SXM4-40GB") == 312
    assert [table_peak(k) for k in ("TPU v4", "TPU v5 lite", "TPU v5", "TPU v5p", "TPU v6 lite")] == [
        275, 197, 459, 459, 918]
    assert table_peak("cpu") is None
    cpu = device_peak("auto")  # a CPU has no datasheet peak: no MFU, and the reason is given
    assert cpu.tflops is None and "no MFU" in cpu.describe()
    assert "mfu" not in flop_rates(2e12, 8, cpu)
    assert flop_rates(2e12, 8, device_peak("0.5")) == {"model_flops_per_s": 2e12, "tflops_per_device": 0.25,
                                                       "mfu": 0.5}
    for bad in ("fast", "0", "-3", "inf"):
        with pytest.raises(ConfigError, match="train.peak"):
            device_peak(bad)


def test_bfloat16_first_moment_halves_its_memory_and_leaves_the_second_in_float32(tiny_cfg):
    def moments(cfg):
        state = make_setup(cfg, make_mesh(cfg.mesh), 384).abstract_state()
        adam = state["opt_state"][1][0]  # chain(clip, adamw): adamw's scale_by_adam state
        return {x.dtype for x in jax.tree.leaves(adam.mu)}, {x.dtype for x in jax.tree.leaves(adam.nu)}

    assert moments(tiny_cfg()) == ({jnp.dtype("float32")}, {jnp.dtype("float32")})
    assert moments(tiny_cfg("optim.mu_dtype=bfloat16")) == ({jnp.dtype("bfloat16")}, {jnp.dtype("float32")})

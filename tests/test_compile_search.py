"""`pretrax compile --search`: plans that fit a TPU slice, ranked by a roofline bound from the TPU compiler's costs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY
from pretrax import config as config_lib
from pretrax.compile_search import REMATS, format_search, parse_space, search
from pretrax.errors import ConfigError
from pretrax.roofline import collective_bytes

pytestmark = pytest.mark.tpu_compile

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
XLA_ONLY = dict(tensor="1", attention="xla")  # on v5e-4: meshes 4x1x1, 2x2x1, 1x4x1


def pretrax_compile(*args):
    return subprocess.run([sys.executable, "-m", "pretrax.cli", "compile", TINY_CONFIG, *TINY, *args],
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- HLO collectives

HLO = """
  %ag = bf16[8,64]{1,0} all-gather(bf16[2,64]{1,0} %p), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %ag.clone = bf16[8,64]{1,0} all-gather(bf16[2,64]{1,0} %p), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %ar = (f32[16]{0}, f32[4,4]{1,0}, /*index=2*/f32[]{:T(128)}) all-reduce(%a, %b, %c), channel_id=2, replica_groups={{0,1},{2,3}}, to_apply=%add
  %rs = f32[4]{0} reduce-scatter(f32[16]{0} %g), channel_id=3, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
  %ags = (bf16[2,8]{1,0}, bf16[4,8]{1,0}, u32[]{:S(2)}) all-gather-start(bf16[2,8]{1,0} %q), channel_id=4, replica_groups=[4,2]<=[8]
  %agd = bf16[4,8]{1,0} all-gather-done(%ags)
  %cp = f32[10]{0} collective-permute(f32[10]{0} %x), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %dot = f32[8,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
"""


def test_collective_bytes_of_a_known_hlo():
    got = collective_bytes(HLO)
    # all-gather: 8*64*2 bytes gathered over 4 chips sends 3/4 of it (the clone with the same channel counted once);
    # the async start's result is its second array, 4*8*2 bytes over 2 chips: half of it
    assert got["all-gather"] == 1024 * 3 / 4 + 64 / 2
    assert got["all-reduce"] == 2 * (16 + 16 + 1) * 4 * (1 / 2)  # twice (n-1)/n of every tuple element, n = 2
    assert got["reduce-scatter"] == 16 * 3  # (n-1) x its result: 3/4 of the 64-byte operand, n = 4 on axis_0
    assert got["collective-permute"] == 40 and got["all-to-all"] == 0


# ---------------------------------------------------------------- the search's rules, with a stand-in compiler

FACTOR = dict(zip(REMATS, (1.0, 0.9, 0.6, 0.5)))  # less memory with more remat


def fake_memory(plan, divide_by=1.0):
    """A stand-in for the compiler: per-chip GiB = 20 / fsdp x remat factor / divide_by (16 GiB fit);
    step = 1 s per remat level + 0.1 s per fsdp way."""
    total = 20 / plan.fsdp * FACTOR[plan.remat] / divide_by
    fits = total <= 16
    row = {"plan": vars(plan), "status": "fits" if fits else "too_big", "fits": fits, "total_gib": total,
           "at_least": False, "cost_compiles": 0}
    if fits:
        step = 1 + REMATS.index(plan.remat) + 0.1 * plan.fsdp
        row.update(step_s=step, compute_s=step, hbm_s=0.0, collective_s=0.0, mfu_bound=0.5)
    return row


def fake_evaluate(cfg_dict, topology, slices, plan, model_flops_per_chip):
    return fake_memory(plan)


def fake_evaluate_accum(cfg_dict, topology, slices, plan, model_flops_per_chip):
    return fake_memory(plan, 1.5 if plan.grad_accum >= 2 else 0.5)  # with 1 micro-batch 40 GiB at fsdp 1


def fake_evaluate_never(cfg_dict, topology, slices, plan, model_flops_per_chip):
    return fake_memory(plan, 0.1)


def fake_search(evaluate_fn=fake_evaluate, jobs=1, max_compiles=24, **space):
    cfg = config_lib.load(TINY_CONFIG, TINY)
    return search(cfg, "v5e-4", space=parse_space(**{**XLA_ONLY, **space}), max_compiles=max_compiles, jobs=jobs,
                  evaluate_fn=evaluate_fn)


@pytest.mark.parametrize("jobs", [1, 2])
def test_remat_ladder_stops_at_the_first_fit_and_more_accum_is_not_tried(jobs):
    r = fake_search(jobs=jobs)
    tried = sorted((p["plan"]["fsdp"], p["plan"]["remat"]) for p in r["plans"] + r["not_fitting"])
    # 4x1x1 climbs none (20 GiB), dots (18), attention (12: fits) and never compiles full; the others fit at none
    assert tried == [(1, "attention"), (1, "dots"), (1, "none"), (2, "none"), (4, "none")]
    assert [(p["plan"]["fsdp"], p["plan"]["remat"]) for p in r["plans"]] == [(2, "none"), (4, "none"), (1, "attention")]
    c = r["counts"]  # 3 meshes x 1 attention x 4 remats x 4 grad_accums (1, 2, 4, 8 divide the batch of 8)
    assert (c["space"], c["compiled"], c["pruned_remat"], c["pruned_accum"], c["budget"]) == (48, 5, 7, 36, 0)
    assert c["space"] == c["compiled"] + c["pruned_remat"] + c["pruned_accum"]


def test_the_budget_leaves_out_the_last_chains_and_says_so():
    r = fake_search(max_compiles=4)
    assert r["counts"]["compiled"] == 4 and r["counts"]["budget"] == 4  # 1x4x1's whole ladder was left out
    assert {p["plan"]["fsdp"] for p in r["plans"]} == {1, 2}
    assert "4 left out by --max-compiles 4" in format_search(r)


def test_grad_accum_rises_only_when_nothing_fits():
    r = fake_search(fake_evaluate_accum, fsdp="1", remat="none,full")  # fits only with 2 micro-batches
    assert [(p["plan"]["grad_accum"], p["plan"]["remat"]) for p in r["plans"]] == [(2, "none")]
    assert sorted((p["plan"]["grad_accum"], p["plan"]["remat"]) for p in r["not_fitting"]) == [(1, "full"), (1, "none")]
    assert r["counts"]["pruned_accum"] == 4 and r["counts"]["pruned_remat"] == 1  # accum 4 and 8; full at accum 2


def test_nothing_fits_names_the_smallest_plan_seen():
    r = fake_search(fake_evaluate_never, grad_accum="1")
    assert not r["plans"] and len(r["not_fitting"]) == 12
    assert r["smallest"]["total_gib"] == pytest.approx(25)
    assert format_search(r).splitlines()[-1] == ("nothing fits: the smallest per-chip total seen is 25.00 GiB "
                                                 "(of 16 GiB HBM), on mesh 1x4x1 remat full accum 1 attention xla")


def test_context_ways_are_tried_and_ring_attention_only_where_the_sequence_is_split():
    r = fake_search(context="1,2", attention="xla,ring", remat="none", grad_accum="1")
    tried = sorted((p["plan"]["context"], p["plan"]["attention"], p["plan"]["fsdp"])
                   for p in r["plans"] + r["not_fitting"])
    # v5e-4, tensor 1: fsdp 1, 2, 4 with the sequence whole; fsdp 1, 2 with it split in two (xla and ring each)
    assert tried == [(1, "xla", 1), (1, "xla", 2), (1, "xla", 4), (2, "ring", 1), (2, "ring", 2), (2, "xla", 1),
                     (2, "xla", 2)]
    assert r["counts"]["space"] == len(tried)
    assert "context 2" in format_search(r)


def test_bad_search_spaces_are_one_line_errors():
    cfg = config_lib.load(TINY_CONFIG, TINY)
    cases = [("v5e-3", {}, r"unknown TPU topology 'v5e-3'; valid: "),
             ("v5e-4", dict(tensor="3"), r"--tensor 3 does not divide the 4 chips of a v5e-4 slice; valid: 1, 2, 4"),
             ("v5e-8", dict(tensor="8"), r"--tensor 8 does not divide model.n_heads=4"),
             ("v5e-4", dict(data="4", fsdp="4"), r"no mesh in the search space has data x fsdp x tensor = 4"),
             ("v5e-4", dict(grad_accum="3"), r"--grad-accum 3 does not divide train.batch_size=8"),
             ("v5e-4", dict(context="3"), r"--context 3 does not divide the 4 chips of a v5e-4 slice"),
             ("v5e-4", dict(attention="ring"), r"--attention ring passes keys and values around a context axis")]
    for topology, space, message in cases:
        with pytest.raises(ConfigError, match=message):
            search(cfg, topology, space=parse_space(**space), evaluate_fn=fake_evaluate)
    with pytest.raises(ConfigError, match="--remat 'some' is not one of none, dots, attention, full"):
        parse_space(remat="none,some")
    with pytest.raises(ConfigError, match=r"--context 4 does not divide the sequence lengths \(data.seq_len=30\)"):
        search(cfg.replace(**{"data.seq_len": 30}), "v5e-4", space=parse_space(context="4"), evaluate_fn=fake_evaluate)
    with pytest.raises(ConfigError, match="--tensor takes positive integers"):
        parse_space(tensor="0")


# ---------------------------------------------------------------- real compiles by libtpu


@pytest.fixture(scope="module")
def searched():
    result = pretrax_compile("--topology", "v5e-4", "--search", "--tensor", "1", "--fsdp", "1,4",
                             "--remat", "none,full", "--attention", "xla", "--jobs", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_search_ranks_the_fitting_plans_by_the_roofline_estimate(searched):
    r = searched
    plans = r["plans"]
    assert sorted(p["plan"]["fsdp"] for p in plans) == [1, 4] and r["counts"]["compiled"] == 2  # meshes 4x1x1, 1x4x1
    assert r["counts"]["pruned_remat"] == 2  # remat full never compiled: none fits on both
    assert [p["step_s"] for p in plans] == sorted(p["step_s"] for p in plans)
    spec = r["chip"]
    for p in plans:
        cost = p["cost"]
        assert p["fits"] and 0 < p["total_gib"] < 16 and p["cost_compiles"] == 0  # unscanned, one micro-batch
        assert p["compute_s"] == pytest.approx(cost["flops"] / (spec["peak_tflops"] * 1e12))
        assert p["hbm_s"] == pytest.approx(cost["hbm_bytes"] / (spec["hbm_gbps"] * 1e9))
        assert p["collective_s"] == pytest.approx(cost["ici_bytes"] / (spec["ici_gbps"] * 1e9))
        assert p["step_s"] == pytest.approx(max(p["compute_s"], p["hbm_s"]) + p["collective_s"])
        mfu = r["model_flops_per_step"] / r["chips"] / (p["step_s"] * spec["peak_tflops"] * 1e12)
        assert p["mfu_bound"] == pytest.approx(mfu) and 0 < mfu < 1
    by_fsdp = {p["plan"]["fsdp"]: p["cost"]["ici_bytes_by_kind"] for p in plans}
    assert by_fsdp[1]["all-gather"] == 0 and by_fsdp[1]["all-reduce"] > 0  # pure data parallel: gradients only
    assert by_fsdp[4]["all-gather"] > 0  # fsdp gathers the weights
    text = format_search(r)
    assert "2 plans fit, best first:" in text and "no pipeline parallelism" in text and "upper bound" in text


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")  # compile-only devices cannot load
def test_loops_cost_what_the_unrolled_program_costs():
    """XLA counts a loop body once: a scanned layer, and a block of chunked attention or loss (4 blocks of 8
    positions here). The search's depth-1/depth-2 correction over programs with their blocks unrolled gives the
    cost of the unscanned program unrolled by hand, a program with no loop left to undercount (with each block
    counted once per loop, the correction came out below even the unchunked model's: 15.8M against 23.7M
    FLOPs, 2026-12-03)."""
    from pretrax.compile_search import _compile, _devices, has_loops, step_cost
    from pretrax.models.block_map import unrolled
    from pretrax.parallel.topologies import parse_topology
    from pretrax.roofline import program_cost

    cfg = config_lib.load(TINY_CONFIG, TINY + ["model.n_layers=3", "model.scan_layers=true", "mesh.data=1",
                                               "mesh.fsdp=4", "model.attention_query_chunk=8", "train.loss_chunk=8"])
    with pytest.MonkeyPatch.context() as mp:  # the libtpu variables topology_devices sets, undone after
        for var, value in {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                           "TPU_ACCELERATOR_TYPE": "v5litepod-4"}.items():
            mp.setenv(var, value)
        devices = _devices(parse_topology("v5e-4"), 1)
        corrected, compiles = step_cost(cfg, devices)
        with unrolled():
            compiled = _compile(cfg.replace(**{"model.scan_layers": False}), devices)
    assert not has_loops(compiled)  # so XLA's count of it is the whole step's
    by_hand = program_cost(compiled)
    assert compiles == 2
    assert corrected["flops"] == pytest.approx(by_hand["flops"], rel=1e-4)
    # bytes accessed depend on XLA's fusion choices, which differ a little between depths 1, 2 and 3 (1.2% here)
    assert corrected["hbm_bytes"] == pytest.approx(by_hand["hbm_bytes"], rel=2e-2)
    assert corrected["ici_bytes"] == pytest.approx(by_hand["ici_bytes"], rel=1e-3)
    assert corrected["ici_bytes_by_kind"]["all-gather"] > 0


@pytest.mark.slow
def test_search_bad_input_exits_2_with_one_line():
    result = pretrax_compile("--topology", "v5e-4", "--search", "--tensor", "3")
    assert result.returncode == 2
    assert result.stderr.startswith("pretrax: error: --tensor 3 does not divide the 4 chips of a v5e-4 slice")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    from pretrax import cli

    assert cli.main(["compile", TINY_CONFIG, "--topology", "v5e-4", "--tensor", "2"]) == 2  # no --search to restrict

"""`pretrax compile`: the real train step compiled by libtpu for TPU topologies, on this CPU machine."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import TINY
from pretrax import config as config_lib
from pretrax.compile import with_slices
from pretrax.errors import ConfigError
from pretrax.parallel.mesh import make_mesh
from pretrax.parallel.topologies import parse_topology

pytestmark = pytest.mark.tpu_compile

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
SCANNED = TINY + ["model.scan_layers=true"]  # one layer body: the quickest compile


def pretrax_compile(*args):
    return subprocess.run([sys.executable, "-m", "pretrax.cli", "compile", TINY_CONFIG, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, chips, grid, hbm", [
    ("v4-128", 64, (4, 4, 4), 32),  # v4 and v5p names count TensorCores, two per chip
    ("v5p-1024", 512, (8, 8, 8), 95),
    ("v5e-256", 256, (16, 16), 16),  # v5e and v6e names count chips
    ("v5litepod-16", 16, (4, 4), 16),
    ("v6e-64", 64, (8, 8), 32),
])
def test_topology_names(name, chips, grid, hbm):
    topo = parse_topology(name)
    assert (topo.chips, topo.grid, topo.hbm_gib) == (chips, grid, hbm)
    assert int(np.prod(grid)) == chips


@pytest.mark.parametrize("name", ["v5p-7", "v5e-512", "v9-8", "tpu", "v4-8x"])
def test_unknown_topology_names_list_the_valid_ones(name):
    with pytest.raises(ConfigError, match=r"unknown TPU topology .*valid: v4-8, .*v5p-128"):
        parse_topology(name)


def test_num_slices_sets_mesh_dcn_data_and_must_agree_with_it():
    cfg = config_lib.load(None, TINY)
    assert with_slices(cfg, 2).mesh.dcn_data == 2
    assert with_slices(config_lib.load(None, TINY + ["mesh.dcn_data=2"]), None).mesh.dcn_data == 2
    with pytest.raises(ConfigError, match="--num-slices 3 disagrees with mesh.dcn_data=2"):
        with_slices(config_lib.load(None, TINY + ["mesh.dcn_data=2"]), 3)
    with pytest.raises(ConfigError, match="mesh.dcn_data"):
        config_lib.load(None, TINY + ["mesh.dcn_data=0"])


@pytest.mark.devices(8)
def test_dcn_data_needs_devices_from_that_many_slices():
    with pytest.raises(ConfigError, match="mesh.dcn_data=2 needs devices from 2 TPU slices.*no slice index"):
        make_mesh(config_lib.load(None, TINY + ["mesh.dcn_data=2"]).mesh)  # the 8 CPU devices


def test_multi_slice_mesh_puts_the_dcn_axis_across_slices(monkeypatch):
    """2 slices of v5e-8: data = 2 slices x 2 per slice; every slice's rows hold exactly that slice's chips."""
    # what topology_devices would set for libtpu, set here so that they are undone after the test
    for var, value in {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                       "TPU_ACCELERATOR_TYPE": "v5litepod-8"}.items():
        monkeypatch.setenv(var, value)
    from pretrax.compile import topology_devices

    devices = topology_devices(parse_topology("v5e-8"), 2)
    cfg = config_lib.load(None, TINY + ["mesh.dcn_data=2", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    mesh = make_mesh(cfg.mesh, devices)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "expert": 1, "context": 1, "tensor": 2}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)[:, :, 0, 0]  # (data, fsdp, tensor)
    for row in range(4):
        assert (slice_of[row] == row // 2).all()  # the outer factor of 'data' is the slice
    for s in (0, 1):
        assert {d.id for d in mesh.devices[2 * s: 2 * s + 2].flat} == {d.id for d in devices if d.slice_index == s}


@pytest.mark.slow
def test_compile_two_slices_reports_memory_and_flops_and_fits():
    result = pretrax_compile(*SCANNED, "--topology", "v5e-4", "--num-slices", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    assert (r["topology"], r["slices"], r["chips"], r["device_kind"]) == ("v5e-4", 2, 8, "TPU v5 lite")
    assert r["mesh"] == {"data": 8, "fsdp": 1, "expert": 1, "context": 1, "tensor": 1}  # mesh.data=-1 per slice, times 2 slices

    from pretrax.flops import step_flops
    from pretrax.train.state import make_setup, model_vocab_size, param_count

    cfg = config_lib.load(TINY_CONFIG, SCANNED)
    setup = make_setup(cfg, make_mesh(cfg.mesh), model_vocab_size(cfg, 384))
    assert r["parameters"] == param_count(setup.abstract_params)
    assert r["model_flops_per_token"] == pytest.approx(step_flops(cfg, setup.vocab_size).per_token)
    assert r["tokens_per_step"] == 8 * 32 and r["xla_flops_per_step_per_chip"] > 0

    mem = r["memory_bytes"]
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state()))
    # pure data parallel: each chip holds the whole state, and the donated state's outputs reuse it
    assert mem["aliased"] >= state_bytes and mem["arguments"] >= mem["aliased"]
    assert mem["total"] == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"] + mem["code"]
    assert r["fits"] and r["shortfall_gib"] == 0 and mem["total"] < r["hbm_gib"] * 2**30


@pytest.mark.slow  # 5 s: a whole TPU compile in a subprocess
def test_compile_too_big_for_hbm_exits_3_with_the_shortfall():
    big = ["model.d_model=8192", "model.n_heads=64", "model.d_ff=32768", "model.vocab_size=32768"]  # 2.4B params
    result = pretrax_compile(*SCANNED, *big, "--topology", "v5e-4")  # replicated: ~40 GiB per 16 GiB chip
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("does not fit: at least ") and "GiB of HBM of a TPU v5 lite chip" in last
    shortfall = float(last.split("at least ")[1].split(" GiB")[0])
    assert shortfall > 10


@pytest.mark.slow
def test_compile_bad_input_exits_2_with_one_line():
    unknown = pretrax_compile(*TINY, "--topology", "v5e-3")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("pretrax: error: unknown TPU topology 'v5e-3'; valid: ")
    assert "v5e-4" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1

    mismatch = pretrax_compile(*TINY, "mesh.data=3", "--topology", "v5e-4")
    assert mismatch.returncode == 2
    assert "mesh 3x1x1" in mismatch.stderr and "4 are available" in mismatch.stderr
    assert len(mismatch.stderr.strip().splitlines()) == 1, mismatch.stderr


@pytest.mark.slow
def test_top_buffers_lists_the_largest_temporaries_at_the_peak():
    """--top-buffers: the compiler's own largest temporaries, largest first, each a real array of the model."""
    from pretrax.compile import format_report

    result = pretrax_compile(*SCANNED, "--topology", "v5p-8", "--top-buffers", "6", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    top = r["top_buffers"]
    sizes = [b["bytes"] for b in top]
    assert len(top) == 6 and sizes == sorted(sizes, reverse=True) and sizes[-1] > 0
    assert sum(sizes) <= r["memory_bytes"]["temporaries"]  # all live at once, inside the temporaries
    cfg = config_lib.load(TINY_CONFIG, SCANNED)
    per_chip_batch = cfg.train.batch_size // r["chips"]
    for b in top:
        dims = [int(d) for d in b["shape"].split("[")[1].rstrip("]").split(",") if d]
        assert b["dtype"] in ("f32", "bf16", "s32") and b["shape"].startswith(b["dtype"] + "[")
        elements = b["bytes"] // {"f32": 4, "bf16": 2, "s32": 4}[b["dtype"]]
        assert int(np.prod(dims)) <= elements <= 16 * int(np.prod(dims)) + 1024  # the shape's, padded to TPU tiles
        assert b["op"]
    # the biggest are activations: one chip's batch rows x the sequence x a model width
    widths = {cfg.model.d_model, cfg.model.d_ff, cfg.model.head_dim or cfg.model.d_model // cfg.model.n_heads}
    biggest = [int(d) for d in top[0]["shape"].split("[")[1].rstrip("]").split(",")]
    assert per_chip_batch in biggest and cfg.data.seq_len in biggest and widths & set(biggest), top[0]
    assert any(b["source"].startswith("pretrax/") for b in top) or any("jit(" in b["op"] for b in top)
    text = format_report(r)
    assert "largest temporaries live at the peak" in text and top[0]["shape"] in text
    assert text.splitlines()[-1].startswith("fits: ")

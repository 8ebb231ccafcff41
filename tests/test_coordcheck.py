"""`pretrax coordcheck`: under muP every hidden layer's mean |x| stays flat across widths
during the first Adam steps (microsoft/mup's own criterion: the l1 ratio between
consecutive widths within (1/1.2, 1.2)); under SP some layer clearly grows."""

import csv
import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
from conftest import cli_in_process

from pretrax.cli import main

WIDTHS = (128, 256, 512)
MOE_WIDTHS = (64, 128, 256)
STEPS = 3
# one layer, a short sequence: six compiles (sp, mup x 3 widths); 3 seeds averaged per width keep the smallest
# width's seed-to-seed spread (about 8% at 128) inside the band: the worst muP ratio of neighbouring widths was
# 1.144 with 3 seeds, 1.126 with 4 (2026-12-03; 3 seeds: 20 s against 32 s, alone)
OVERRIDES = ["model.n_layers=1", "model.n_heads=4", "model.d_model=128", "model.d_ff=512", "data.seq_len=64",
             "train.batch_size=8", "optim.lr=3e-3"]


def coordcheck(out, *extra, widths=WIDTHS, seeds=3) -> str:
    """`pretrax coordcheck` (cli.main in this process), whose stdout it returns; compiled as the suite compiles
    (tests/conftest.py: 24 s for the dense check against 30 s with XLA's defaults, 2026-12-03)."""
    config = out / "tiny.yaml"
    config.write_text(f"run:\n  dir: {out / 'run'}\n")
    proc = cli_in_process("coordcheck", config, *OVERRIDES, *extra, "--widths", ",".join(map(str, widths)),
                          "--steps", STEPS, "--seeds", seeds, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("coordcheck")
    stdout = coordcheck(out, "--json")
    coords = defaultdict(list)  # (kind, step, layer) -> mean |x| per width, in width order
    with open(out / "coordcheck.csv") as f:
        for row in csv.DictReader(f):
            coords[row["kind"], int(row["step"]), row["layer"]].append((int(row["width"]), float(row["mean_abs"])))
    coords = {k: [v for _, v in sorted(vals)] for k, vals in coords.items()}
    return json.loads(stdout), coords, out


def _ratios(values):
    return [b / a for a, b in itertools.pairwise(values)]


@pytest.mark.slow
def test_mup_is_flat_and_sp_is_not(run):
    _, coords, _ = run
    layers = {layer for (_, _, layer) in coords}
    hidden = layers - {"logits"}
    assert hidden == {"embed", "blocks.0.attn", "blocks.0.mlp"}
    for step in range(1, STEPS + 1):
        for layer in hidden:
            for r in _ratios(coords["mup", step, layer]):
                assert 1 / 1.2 < r < 1.2, ("mup", step, layer, coords["mup", step, layer])
    # SP: the attention and MLP outputs grow at least 1.5x per doubling of width at every step
    for step in range(1, STEPS + 1):
        for layer in ("blocks.0.attn", "blocks.0.mlp"):
            assert min(_ratios(coords["sp", step, layer])) > 1.5, ("sp", step, layer, coords["sp", step, layer])


@pytest.mark.slow
def test_json_reports_last_step_slopes(run):
    slopes, coords, _ = run
    assert set(slopes) == {"sp", "mup"} and set(slopes["sp"]) == set(slopes["mup"]) == {
        layer for (_, _, layer) in coords}
    for layer in ("embed", "blocks.0.attn", "blocks.0.mlp", "logits"):
        assert abs(slopes["mup"][layer]) < 0.1, layer  # flat: |slope| well under SP's
    assert slopes["sp"]["blocks.0.mlp"] > 0.5 and slopes["sp"]["blocks.0.attn"] > 0.5


@pytest.mark.slow
def test_writes_table_slopes_and_figure(run):
    _, coords, out = run
    assert (out / "coordcheck.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "coordcheck.png").stat().st_size > 20_000
    md = (out / "coordcheck.md").read_text()
    assert md.startswith("| layer | sp t=0 |") and "| blocks.0.mlp |" in md
    assert len(coords) == 2 * (STEPS + 1) * 4 and all(len(v) == len(WIDTHS) for v in coords.values())


@pytest.mark.parametrize("args, words", [
    (["--widths", "128,250"], "width 250 is not divisible by model.n_heads (4)"),
    (["--widths", "128"], "two or more distinct positive widths"),
    (["--widths", "128,abc"], "comma-separated integers"),
    (["--widths", "128,256", "--steps", "0"], "--steps and --seeds must be >= 1"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, words):
    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  dir: {tmp_path / 'run'}\n")
    assert main(["coordcheck", str(config), "model.n_heads=4", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_mup_stays_flat_with_routed_experts(tmp_path):
    """One MoE layer (4 experts of width d_model, top-2; the expert width scales with the model's): under muP
    the routed MLP's output, the attention and the embedding keep their size across widths, under SP the
    MLP's grows by about 2^1.5 or more per doubling. Routing is discrete (a token's experts change with the
    width's draws), so the MoE output's slope is noisier than a dense MLP's: |slope| < 0.35 per doubling
    at every step. Widths 64-256, a quarter of the compute of 128-512 (measured 2026-12-03: MLP -0.01,
    -0.10, -0.15, attention at most +0.08; SP's MLP 1.57 to 2.05; at 128-512 -0.23 to +0.15, SP 2.03 to 2.58)."""
    coordcheck(tmp_path, "model.d_model=64", "model.d_ff=256", "model.moe.num_experts=4", "model.moe.d_ff=64",
               widths=MOE_WIDTHS, seeds=4)
    slopes = defaultdict(dict)  # (kind, layer) -> {step: log2 slope of mean |x| against width}
    with open(tmp_path / "coordcheck.csv") as f:
        rows = list(csv.DictReader(f))
    for (kind, step, layer), group in itertools.groupby(
            sorted(rows, key=lambda r: (r["kind"], int(r["step"]), r["layer"], int(r["width"]))),
            key=lambda r: (r["kind"], int(r["step"]), r["layer"])):
        values = [float(r["mean_abs"]) for r in group]
        slopes[kind, layer][step] = np.polyfit(np.log2(MOE_WIDTHS), np.log2(values), 1)[0]
    for step in range(1, STEPS + 1):
        for layer in ("embed", "blocks.0.attn", "blocks.0.mlp"):
            assert abs(slopes["mup", layer][step]) < 0.35, ("mup", step, layer, slopes["mup", layer])
        assert slopes["sp", "blocks.0.mlp"][step] > 1.2, ("sp", step, slopes["sp", "blocks.0.mlp"])

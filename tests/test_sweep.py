"""pretrax sweep: a real 2x2 grid of tiny runs, skip on rerun, resume of an interrupted point, failures, bad sweeps."""

import csv
import json
import math
import os
import shutil

import pytest
from conftest import TINY

from pretrax import config as config_lib
from pretrax.cli import main
from pretrax.flops import flops_per_token
from pretrax.sweeps.grid import load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "configs", "tiny.yaml")
COMMON = [*TINY, "model.n_layers=1", "train.steps=4", "checkpoint.every=2", "checkpoint.keep=3"]


def write_sweep(path, grid, overrides=COMMON, base=TINY_YAML, out="runs"):
    spec = {"base": base, "dir": str(path.parent / out), "overrides": list(overrides), "grid": grid}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def text(path):
    with open(path) as f:
        return f.read()


def steps(metrics_path):
    return [json.loads(line)["step"] for line in text(metrics_path).splitlines()]


def sweep_cli(capsys, *args):
    code = main(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The 2x2 sweep (widths x learning rates), run once for the tests below."""
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root / "sweep.yaml", {"product": {"model.d_model": [16, 32], "optim.lr": [1e-3, 1e-2]}})
    assert main(["sweep", path]) == 0
    return path, root / "runs"


NAMES = ["d_model=16,lr=0.001", "d_model=16,lr=0.01", "d_model=32,lr=0.001", "d_model=32,lr=0.01"]


@pytest.mark.slow
def test_sweep_writes_one_sane_row_per_point(done):
    _, out = done
    with open(out / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["point", "model.d_model", "optim.lr", "params", "params_non_embedding", "tokens", "flops",
                      "eval_loss", "eval_bits_per_byte", "status", "run_dir"]
    rows = read_csv(out / "results.csv")
    assert [r["point"] for r in rows] == NAMES
    for row in rows:
        assert row["status"] == "ok"
        cfg = config_lib.load(os.path.join(row["run_dir"], "config.yaml"))  # what the run really trained
        assert cfg.model.d_model == int(row["model.d_model"]) and cfg.optim.lr == float(row["optim.lr"])
        assert row["run_dir"] == str(out / row["point"])
        assert int(row["tokens"]) == 4 * 8 * 32  # steps x batch x seq_len
        params, non_embedding = int(row["params"]), int(row["params_non_embedding"])
        vocab = 384  # byte tokenizer (259 ids + 100 sentinels) rounded up to 128
        assert params - non_embedding == vocab * cfg.model.d_model  # the tied embedding table
        assert float(row["flops"]) == flops_per_token(params, cfg.model, vocab, 32, 32) * int(row["tokens"])
        last = json.loads(text(os.path.join(row["run_dir"], "metrics.jsonl")).splitlines()[-1])
        assert last["step"] == 4 and float(row["eval_loss"]) == last["eval_loss"]
        assert float(row["eval_bits_per_byte"]) == last["eval_bits_per_byte"]
        assert 0 < float(row["eval_loss"]) < 1.5 * math.log(vocab)
    by_name = {r["point"]: r for r in rows}
    assert int(by_name[NAMES[2]]["params"]) > int(by_name[NAMES[0]]["params"])
    assert by_name[NAMES[0]]["eval_loss"] != by_name[NAMES[1]]["eval_loss"]  # the learning rate took effect


@pytest.mark.slow
def test_rerun_skips_finished_points(done, capsys):
    path, out = done
    before = {p: text(out / p / "metrics.jsonl") for p in NAMES}
    table = text(out / "results.csv")
    code, stdout, _ = sweep_cli(capsys, path)
    assert code == 0
    assert stdout.count("skipped") == 4 and "training" not in stdout
    assert {p: text(out / p / "metrics.jsonl") for p in NAMES} == before
    assert text(out / "results.csv") == table


@pytest.mark.slow
def test_interrupted_point_resumes_from_its_checkpoint(done, capsys):
    """A point killed after its step-2 checkpoint (no step 4, no row) continues from step 2 to the same loss."""
    path, out = done
    rows = read_csv(out / "results.csv")
    victim = NAMES[3]
    original = next(r for r in rows if r["point"] == victim)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["point"] != victim)
    shutil.rmtree(out / victim / "checkpoints" / "4")
    metrics = out / victim / "metrics.jsonl"
    metrics.write_text("".join(line for line in text(metrics).splitlines(True) if json.loads(line)["step"] <= 2))

    code, stdout, _ = sweep_cli(capsys, path)
    assert code == 0
    assert stdout.count("skipped") == 3 and "resumed from step 2" in stdout
    again = next(r for r in read_csv(out / "results.csv") if r["point"] == victim)
    assert again["status"] == "ok" and again["eval_loss"] == original["eval_loss"]  # bit-for-bit resume
    assert steps(metrics) == [1, 2, 3, 4]
    assert [r["point"] for r in read_csv(out / "results.csv")] == NAMES  # grid order kept


def test_failed_points_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    # valid configs, but 4 and 12 sequences do not split over the 8 data-parallel devices: train() refuses
    path = write_sweep(tmp_path / "s.yaml", {"zip": {"train.batch_size": [4, 12]}})
    code, stdout, _ = sweep_cli(capsys, path, "--dir", str(tmp_path / "elsewhere"))
    assert code == 1
    assert not (tmp_path / "runs").exists()  # --dir replaced the sweep's dir
    rows = read_csv(tmp_path / "elsewhere" / "results.csv")
    assert [r["point"] for r in rows] == ["batch_size=4", "batch_size=12"]
    for row in rows:
        assert row["status"].startswith("failed: train.batch_size / train.grad_accum =")
        assert "not divisible by the data-parallel size 8" in row["status"]
        assert row["eval_loss"] == "" and int(row["params"]) > 0
    assert "0 ok, 2 failed" in stdout


@pytest.mark.parametrize(
    "grid, overrides, message",
    [
        ({"product": {"model.d_modle": [16, 32]}}, COMMON,
         "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
        ({}, COMMON, "has an empty grid"),
        ({"product": {"model.d_model": []}}, COMMON, "grid.product.model.d_model must be a non-empty list"),
        ({"zip": {"model.d_model": [16, 32], "optim.lr": [0.1]}}, COMMON,
         "grid.zip lists must have the same length (model.d_model has 2, optim.lr has 1)"),
        ({"product": {"model.d_model": [16, 30]}}, COMMON,
         "point model.d_model=30: model.d_model (30) must be divisible by model.n_heads (4)"),
        ({"product": {"run.dir": ["a", "b"]}}, COMMON, "run.dir cannot be set"),
        ({"prodcut": {"model.d_model": [16]}}, COMMON, "unknown key 'grid.prodcut'; did you mean 'grid.product'?"),
        ({"product": {"model.d_model": [16, 16]}}, COMMON, "has the same point more than once: d_model=16"),
    ],
)
def test_bad_sweeps_fail_before_anything_runs(tmp_path, capsys, grid, overrides, message):
    path = write_sweep(tmp_path / "bad.yaml", grid, overrides)
    code, _, err = sweep_cli(capsys, path)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_collect_gathers_the_results_of_runs_made_elsewhere(tmp_path, capsys):
    """The points trained outside the sweep (here: `pretrax train` with each point's overrides and run.dir;
    one finished, one stopped at step 2, one never started), then --collect writes results.csv from their
    run dirs."""
    path = write_sweep(tmp_path / "s.yaml", {"product": {"optim.lr": [1e-3, 3e-3, 1e-2]}})
    points = load_sweep(path).points
    train_args = [["train", TINY_YAML, *p.overrides, f"run.dir={p.cfg.run.dir}"] for p in points]
    assert main(train_args[0]) == 0
    assert main([*train_args[1], "--stop-at", "2"]) == 0
    capsys.readouterr()

    code, stdout, _ = sweep_cli(capsys, path, "--collect")
    assert code == 1 and "(1 ok, 2 not finished)" in stdout
    rows = {r["point"]: r for r in read_csv(tmp_path / "runs" / "results.csv")}
    assert [rows[n]["status"] for n in ("lr=0.001", "lr=0.003", "lr=0.01")] == \
        ["ok", "incomplete (step 2 of 4)", "not started"]
    last = json.loads(text(tmp_path / "runs" / "lr=0.001" / "metrics.jsonl").splitlines()[-1])
    assert float(rows["lr=0.001"]["eval_loss"]) == last["eval_loss"] and int(rows["lr=0.001"]["tokens"]) == 4 * 8 * 32

    assert main([*train_args[1]]) == 0  # the stopped run resumed and finished
    capsys.readouterr()
    code, stdout, _ = sweep_cli(capsys, path, "--collect")
    assert "(2 ok, 1 not finished)" in stdout
    assert read_csv(tmp_path / "runs" / "results.csv")[1]["status"] == "ok"


# points per shipped sweep, counted by hand from each grid (zip length x product of the product lists):
# a new sweep file must be added here, so its grid is checked against what its author meant
SHIPPED_POINTS = {"mup_alpha_out.yaml": 1 * 4 * 2, "mup_alpha_out_transfer.yaml": 3 * 3,
                  "mup_lr_transfer.yaml": 3 * 2 * 8, "mup_lr_transfer_8x.yaml": 4 * 2 * 8,
                  "mup_lr_transfer_long.yaml": 3 * 2 * 5, "mup_why_8x.yaml": 15, "tiny_scaling.yaml": 3 * 3, "tiny_widths.yaml": 3 * 3}


@pytest.mark.parametrize("name", [  # the sweeps of 30+ points take 4-8 s each: `make test` only
    pytest.param(n, marks=pytest.mark.slow) if SHIPPED_POINTS.get(n, 0) >= 30 else n
    for n in sorted(os.listdir(os.path.join(REPO, "configs", "sweeps")))])
def test_shipped_sweeps_validate(capsys, tmp_path, name):
    """Every point of every shipped sweep builds a valid config (a dry run validates them all)."""
    # --dir: a fresh dir, so runs of the sweep on this machine do not change what the dry run lists
    code, stdout, _ = sweep_cli(capsys, os.path.join(REPO, "configs", "sweeps", name), "--dry-run",
                                "--dir", str(tmp_path))
    assert code == 0
    assert f"from {TINY_YAML} into {tmp_path}" in stdout  # the base is found next to the sweep file
    points = [line.split()[0] for line in stdout.splitlines() if line.endswith("  to run")]
    assert len(points) == len(set(points)) == SHIPPED_POINTS[name], (name, len(points))

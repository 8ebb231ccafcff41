"""The command line as a user meets it: one-line errors with exit 2, nothing written damaged. One real
`pretrax train` process; the rest run cli.main in this process (conftest.cli_in_process)."""

import os
import subprocess
import sys

import pytest

from conftest import TINY


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One real `pretrax train` process (the console entry point); the tests after it run cli.main in-process."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "configs/tiny.yaml", *TINY, f"run.dir={run_dir}", "train.sample_tokens=20", "train.steps=4",
            "checkpoint.every=2"]
    proc = subprocess.run([sys.executable, "-m", "pretrax.cli", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


@pytest.mark.slow
def test_train_prints_bits_per_byte_and_a_sample(trained_run):
    import json

    from pretrax import config as config_lib

    run_dir, stdout = trained_run
    lines = stdout.splitlines()
    # the closing figures are the final evaluation's, as metrics.jsonl recorded it
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4
    assert f"held-out loss: {last['eval_loss']:.4f} nats/token" in lines
    assert f"held-out bits per byte: {last['eval_bits_per_byte']:.4f}" in lines
    sample = stdout.split("sample:\n", 1)[1]
    assert sample.startswith("def ") and len(sample.rstrip("\n")) > len("def ")
    # config.yaml is the resolved config this run trained with
    expected = config_lib.load("configs/tiny.yaml", [*TINY, f"run.dir={run_dir}", "train.sample_tokens=20",
                                                     "train.steps=4", "checkpoint.every=2"])
    assert config_lib.load(str(run_dir / "config.yaml")) == expected


def snapshot(root):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.d_modl=64"], "unknown config key 'model.d_modl'; did you mean 'model.d_model'?"),
        (["train.steps=ten"], "config key 'train.steps' expects int"),
        (["train.steps=-3"], "config key 'train.steps' must be a positive integer"),
        (["mesh.data=3", "mesh.fsdp=1"], "has 3 devices but 8 are available"),
        (["train.batch_size=4", "mesh.data=8"], "not divisible by the data-parallel size 8"),
        (["model.d_model=48"], "different model: model.d_model (checkpoint 32, now 48)"),
        (["train.batch_size=16"], "would change what the batches hold or their order: train.batch_size "
                                  "(checkpoint 8, now 16)"),
    ],
)
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_touches_nothing(trained_run, overrides, message, cli_run):
    run_dir, _ = trained_run
    before = snapshot(run_dir)
    proc = cli_run("train", "configs/tiny.yaml", *TINY, f"run.dir={run_dir}", *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("pretrax: error")]) == 1
    assert snapshot(run_dir) == before


def test_run_dir_that_is_a_file(tmp_path, cli_run):
    target = tmp_path / "afile"
    target.write_text("keep me")
    proc = cli_run("train", "configs/tiny.yaml", *TINY, f"run.dir={target}")
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "keep me"


def test_missing_config_file(tmp_path, cli_run):
    proc = cli_run("train", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_info_gpt1_parameter_count(cli_run):
    proc = cli_run("info", "configs/gpt1.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters: 116534784" in proc.stdout.splitlines()


@pytest.mark.slow
def test_generate_from_a_run(trained_run, cli_run):
    run_dir, _ = trained_run
    proc = cli_run("generate", str(run_dir), "--prompt", "import ", "--max-new-tokens", "16", "--top-k", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("import ")
    assert len(proc.stdout) > len("import ")


def test_generate_without_checkpoint(tmp_path, cli_run):
    proc = cli_run("generate", str(tmp_path))
    assert proc.returncode == 2 and "no complete checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_info_t5_1_1_base_parameter_count(cli_run):
    proc = cli_run("info", "configs/t5_1_1_base.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters: 247577856" in proc.stdout.splitlines()


def test_encoder_decoder_rows_too_short_for_a_denoiser_are_refused_cleanly(tmp_path, cli_run):
    proc = cli_run("train", "configs/ul2_tiny_encdec.yaml", "data.inputs_len=300", f"run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "data.inputs_len >= 363" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_generate_with_a_ul2_mode(trained_run, cli_run):
    run_dir, _ = trained_run
    proc = cli_run("generate", str(run_dir), "--prompt", "x = ", "--mode", "S", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("x = ")
    bad = cli_run("generate", str(run_dir), "--prompt", "x", "--mode", "Q")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]


def test_data_stats_json(cli_run):
    import json

    proc = cli_run("data", "stats", "configs/ul2r_tiny_decoder.yaml", "--examples", "300", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["examples"] == 300
    assert sum(d["measured"]["count"] for d in stats["denoisers"].values()) == 300

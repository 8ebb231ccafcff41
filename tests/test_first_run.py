"""First-run paths: every command pretrax prints for a user to run next is run here, as printed.

`data prepare` and `tokenizer train` print a train command; `--stop-at` and a SIGTERM say how to
resume; an existing dataset names `--overwrite`. Printed command lines go through a real shell
(their quoting included) with only the tiny model's overrides appended, from a directory that
is not the checkout, on a 17-document corpus of real text (standard library modules).
"""

import dataclasses
import os
import shlex
import subprocess
import sys
import sysconfig

import pytest
import yaml

from conftest import TINY
from test_nan_and_preemption import sigterm_after_rows
from pretrax import config as config_lib
from pretrax.cli import main
from pretrax.data.sources import load_source

MODULES = ["abc", "bisect", "colorsys", "contextlib", "copy", "dataclasses", "fnmatch", "functools", "heapq",
           "keyword", "operator", "queue", "random", "shlex", "string", "textwrap", "this"]
BIN = os.path.dirname(sys.executable)  # where `pretrax` is installed next to this interpreter


def write_corpus(folder) -> str:
    """17 documents: the first 3000 characters of as many standard library modules; returns their glob."""
    folder.mkdir(parents=True)
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in MODULES:
        with open(os.path.join(stdlib, f"{name}.py"), encoding="utf-8") as f:
            (folder / f"{name}.txt").write_text(f.read(3000), encoding="utf-8")
    return str(folder / "*.txt")


def printed(out: str, prefix: str) -> str:
    """The rest of the one printed line that contains prefix."""
    lines = [line.split(prefix, 1)[1] for line in out.splitlines() if prefix in line]
    assert len(lines) == 1, out
    return lines[0]


def shell(command: str, *extra: str, cwd) -> subprocess.CompletedProcess:
    """Run a printed command line as a user pasting it would (bash), extra arguments appended."""
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    return subprocess.run(["bash", "-c", command + " " + shlex.join(extra)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a subprocess and a tfds build or a 248M-parameter model: out of make test-fast
def test_data_prepare_prints_a_train_command_that_evaluates_on_the_validation_split(tmp_path, monkeypatch, capsys):
    docs = write_corpus(tmp_path / "my docs")
    monkeypatch.chdir(tmp_path)  # not the checkout: configs/tiny.yaml is not here
    assert main(["data", "prepare", docs, "--name", "first_run", "--data-dir", "my data/tfds"]) == 0  # 1% held out
    out, err = capsys.readouterr()
    path = tmp_path / "my data" / "tfds" / "first_run" / "1.0.0"
    assert out.splitlines()[0] == f"prepared tfds dataset first_run:1.0.0 at {path}: 16 train and 1 validation documents"
    assert len(out.splitlines()) == 2 and "\r" not in err  # no tfds notes naming its staging dir, no progress bars
    command = printed(out, "(evaluating on its validation split) with: ")
    argv = shlex.split(command)
    assert argv[:2] == ["pretrax", "train"] and "run.dir=runs/first_run" in argv

    cfg = config_lib.load(argv[2], argv[3:])
    train, heldout = load_source(cfg.data, cfg.data.heldout_percent)
    assert (len(train), len(heldout), heldout.split) == (16, 1, "validation")  # all of train; eval on validation
    _, hashed = load_source(dataclasses.replace(cfg.data, tfds_eval_split=""), cfg.data.heldout_percent)
    assert len(hashed) == 0  # what the command used to evaluate on: no held-out document at 2% of 16
    train, heldout = load_source(dataclasses.replace(cfg.data, tfds_split="validation"), 0.0)
    assert (len(train), len(heldout)) == (1, 0)  # training on validation: auto holds out a share of it instead
    monkeypatch.setenv("HOME", str(tmp_path))
    train, _ = load_source(dataclasses.replace(cfg.data, data_dir="~/my data/tfds"), 0.0)
    assert len(train) == 16  # data.data_dir=~/... as README writes it: no shell expands a ~ after "="

    proc = shell(command, *TINY, "train.steps=3", "--no-sample", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out bits per byte" in proc.stdout
    metrics = (tmp_path / "runs" / "first_run" / "metrics.jsonl").read_text()
    assert '"eval_bits_per_byte"' in metrics


def test_an_existing_dataset_names_overwrite_which_replaces_it(tmp_path, capsys):
    docs = write_corpus(tmp_path / "docs")
    argv = ["data", "prepare", docs, "--name", "again", "--data-dir", str(tmp_path / "tfds")]
    assert main(argv) == 0
    assert main([*argv, "--eval-percent", "0"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main([*argv, "--eval-percent", "0", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "/again/1.0.0: 17 train documents\n" in out and "(evaluating on data.heldout_percent of train)" in out
    info = (tmp_path / "tfds" / "again" / "1.0.0" / "dataset_info.json").read_text()
    assert '"validation"' not in info  # replaced: the new dataset has no validation split


@pytest.mark.slow
def test_tokenizer_train_prints_a_train_command_and_stop_at_says_how_to_resume(tmp_path, monkeypatch, capsys):
    docs = write_corpus(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    assert main(["tokenizer", "train", docs, "--vocab-size", "640", "--out", "tok/first.model"]) == 0
    out = capsys.readouterr().out
    path = printed(out, "wrote ")
    assert os.path.isfile(path)
    command = printed(out, "train with it: ")
    tokenizer = os.path.abspath(path)
    assert f"data.tokenizer={tokenizer}" in shlex.split(command) and "run.dir=runs/first" in shlex.split(command)

    stopped = shell(command, *TINY, "train.steps=4", "--no-sample", "--stop-at", "2", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    advice = "run the same command without --stop-at (or with a later step) to resume"
    assert f"stopped at step 2 of 4; {advice}" in stopped.stdout
    saved = yaml.safe_load((tmp_path / "runs" / "first" / "config.yaml").read_text())
    assert saved["data"]["tokenizer"] == tokenizer

    resumed = shell(command, *TINY, "train.steps=4", "--no-sample", cwd=tmp_path)  # as advised: no --stop-at
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming from step 2)" in resumed.stdout + resumed.stderr
    assert "held-out bits per byte" in resumed.stdout


@pytest.mark.slow
def test_after_sigterm_the_same_command_resumes(tmp_path):
    # 40 steps: the SIGTERM goes 0.2 s after the 3rd row, well inside them, and the resumed run trains the
    # rest (150 made that 145 steps, about 6 s of CPU)
    argv = [os.path.join(BIN, "pretrax"), "train", os.path.abspath("configs/tiny.yaml"), *TINY, "train.steps=40",
            "checkpoint.every=1000", "run.dir=run", "--no-sample"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = sigterm_after_rows(proc, tmp_path / "run" / "metrics.jsonl", rows=3, wait=180)
    assert proc.returncode == 143 and "run the same command to resume" in err, err[-3000:]
    step = int(err.split("preempted at step ", 1)[1].split(";")[0])
    assert 3 <= step < 40

    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(resuming from step {step})" in again.stdout + again.stderr
    assert "held-out bits per byte" in again.stdout

"""Run dirs on object storage: the same code as on GCS, against a real GCS server (fake-gcs-server).

Every test trains into gs://BUCKET/run through gcsfs (config, metrics,
TensorBoard, set-asides) and tensorstore's gcs driver (Orbax's arrays), and
checks what a pod user relies on: a resume gives the same losses as a
straight local run, after --stop-at and after kill -9; a damaged newest
checkpoint is verified, reported and skipped; two JAX processes write one
checkpoint both can restore; bad URLs are one line and write nothing locally.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY
from gcs_fixture import child_env

from pretrax import config as config_lib
from pretrax import storage
from pretrax.cli import main as cli_main
from pretrax.train import checkpoint as ckpt
from pretrax.train.checkpoint_verify import list_steps
from pretrax.train.loop import train
from pretrax.train.metrics import logged_rows

pytestmark = pytest.mark.gcs

CONFIG = "configs/tiny.yaml"
# a reference run gives losses only: one checkpoint (its last) instead of one every few steps, as saving
# changes no loss and each save costs a tiny run about 0.3 s of CPU
NO_SAVES = "checkpoint.every=1000"


def load(run_dir, *overrides):
    return config_lib.load(CONFIG, [*TINY, f"run.dir={run_dir}", *overrides])


def metrics_steps(run_dir):
    return [row["step"] for _, row in logged_rows(storage.join(run_dir, "metrics.jsonl")) if row is not None]


def complete_steps(run_dir):
    return [r.step for r in list_steps(ckpt.checkpoint_dir(run_dir), verify=False) if r.complete]


def tensorboard_scalars(run_dir, tag):
    """{step: value} of one scalar, parsed from every event object under RUN_DIR/tensorboard (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    found = {}
    for path, _ in storage.walk_files(storage.join(run_dir, "tensorboard")):
        data, at = storage.read_bytes(path), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = value.simple_value
    return found


@pytest.mark.slow
def test_stop_and_resume_on_gcs_gives_the_losses_of_a_straight_local_run(gcs, tmp_path, capsys):
    straight = train(load(tmp_path / "local", NO_SAVES), progress=False).losses
    run_dir = gcs.make_bucket() + "/runs/tiny"

    first = train(load(run_dir), stop_at=3, progress=False)
    assert first.final_step == 3 and complete_steps(run_dir) == [3]
    resumed = train(load(run_dir), progress=False)
    assert resumed.start_step == 3
    assert {s: resumed.losses[s] for s in (4, 5, 6)} == {s: straight[s] for s in (4, 5, 6)}
    assert {s: first.losses[s] for s in (1, 2, 3)} == {s: straight[s] for s in (1, 2, 3)}

    assert metrics_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # rewritten whole on GCS: each step once, in order
    assert config_lib.load(storage.local_file(storage.join(run_dir, "config.yaml"))).run.dir == run_dir
    losses = tensorboard_scalars(run_dir, "loss")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and losses[6] == pytest.approx(straight[6], rel=1e-6)
    assert not os.path.exists("gs:")  # nothing went to a local folder named after the scheme

    capsys.readouterr()
    assert cli_main(["checkpoints", run_dir]) == 0
    listed = capsys.readouterr().out
    assert "newest that verifies: step 6" in listed and listed.count(" yes       yes") == 2

    # generate samples from the run on GCS (this run, rather than a run trained for it alone)
    assert cli_main(["generate", run_dir, "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")


@pytest.mark.slow
def test_a_truncated_array_object_is_reported_and_the_resume_falls_back(gcs, tmp_path, capsys):
    nine = ["train.steps=9"]
    straight = train(load(tmp_path / "local", *nine, NO_SAVES), progress=False).losses
    run_dir = gcs.make_bucket() + "/run"
    train(load(run_dir, *nine), stop_at=6, progress=False)
    assert complete_steps(run_dir) == [3, 6]

    arrays = [(p, n) for p, n in storage.walk_files(storage.join(ckpt.checkpoint_dir(run_dir), "6", "state"))
              if "/d/" in p]
    assert arrays
    for path, size in arrays:  # uploads cut short
        storage.write_bytes(path, storage.read_bytes(path)[: size // 10])

    capsys.readouterr()
    assert cli_main(["checkpoints", run_dir]) == 1
    listed = capsys.readouterr().out
    assert "NO: state array" in listed and "newest that verifies: step 3" in listed

    resumed = train(load(run_dir, *nine), progress=False)
    assert resumed.start_step == 3
    assert {s: resumed.losses[s] for s in range(4, 10)} == {s: straight[s] for s in range(4, 10)}
    damaged = ckpt.damaged_dir(run_dir)
    assert storage.listdir(damaged) == ["6"]  # set aside on the bucket, not deleted
    assert storage.exists(storage.join(damaged, "6", "commit_success.txt"))
    assert complete_steps(run_dir) == [3, 6, 9]  # step 6 written afresh by the resumed run


@pytest.mark.slow
def test_nan_rollback_restores_from_the_bucket(gcs):
    from test_nan_and_preemption import nan_at

    run_dir = gcs.make_bucket() + "/run"
    result = train(load(run_dir, "train.nan_policy=rollback"), batch_hook=nan_at(5), progress=False)
    assert result.rollbacks == 1 and result.final_step == 6
    assert all(np.isfinite(result.losses[s]) for s in (4, 5, 6))


@pytest.mark.slow
def test_kill_9_mid_run_on_gcs_resumes_exactly(gcs, tmp_path):
    long = ["train.steps=20", "checkpoint.every=4"]  # killed after its 2nd save, 12 steps and 3 saves before its end
    reference = train(load(tmp_path / "local", *long, NO_SAVES), progress=False).losses
    run_dir = gcs.make_bucket() + "/run"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pretrax.cli", "train", CONFIG, *TINY, *long, f"run.dir={run_dir}"],
                            env=child_env(PYTHONWARNINGS="ignore"), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while max(complete_steps(run_dir), default=0) < 8:  # a save lands every 4 steps: kill mid-run
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-2000:]
            time.sleep(0.2)  # each look lists the bucket; the kill still lands 12 steps and 3 saves before the end
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    newest = max(complete_steps(run_dir))
    assert 8 <= newest < 20

    resumed = train(load(run_dir, *long), progress=False)
    assert resumed.start_step == newest
    assert {s: resumed.losses[s] for s in range(newest + 1, 21)} == \
        {s: reference[s] for s in range(newest + 1, 21)}
    assert metrics_steps(run_dir) == list(range(1, 21))  # every step once: stored up to the checkpoint, then resumed


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_write_one_checkpoint_to_gcs_that_both_and_one_restore(gcs, tmp_path):
    from test_multiprocess import run_two_processes

    common = TINY + ["train.steps=6", "checkpoint.every=2", "mesh.data=2", "mesh.fsdp=4"]
    single = train(config_lib.load(None, common + [f"run.dir={tmp_path / 'single'}", NO_SAVES]),
                   progress=False).losses
    run_dir = gcs.make_bucket() + "/multi"

    losses = run_two_processes(common + [f"run.dir={run_dir}"], stop_at=2)
    assert losses[0] == losses[1]
    assert [(r.step, r.complete, r.verifies) for r in list_steps(ckpt.checkpoint_dir(run_dir))] == [(2, True, True)]
    losses = run_two_processes(common + [f"run.dir={run_dir}"], stop_at=4)  # both processes restore it
    assert sorted(losses[0]) == [3, 4] and losses[0][4] == pytest.approx(single[4], rel=2e-5)

    resumed = train(config_lib.load(None, common + [f"run.dir={run_dir}"]), progress=False)  # one process, 8 devices
    assert resumed.start_step == 4
    for step in (5, 6):
        assert resumed.losses[step] == pytest.approx(single[step], rel=2e-5)
    assert metrics_steps(run_dir) == list(range(1, 7))


@pytest.mark.parametrize("url, says", [
    ("s3://bucket/run", "the s3:// scheme is not supported; give a local path or gs://bucket/path"),
    ("hdfs://namenode/run", "the hdfs:// scheme is not supported"),
    ("gs://", "names no bucket"),
])
def test_an_unsupported_url_is_one_line_and_writes_nothing(url, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", os.path.join(os.path.dirname(__file__), "..", CONFIG), f"run.dir={url}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err and url in err
    assert os.listdir(tmp_path) == []


def test_a_missing_bucket_is_named_and_nothing_is_written(gcs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = os.path.join(os.path.dirname(__file__), "..", CONFIG)
    assert cli_main(["train", config, *TINY, "run.dir=gs://no-such-bucket/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bucket gs://no-such-bucket does not exist" in err
    assert cli_main(["checkpoints", "gs://no-such-bucket/run"]) == 2
    assert "gs://no-such-bucket does not exist" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_storage_server_that_does_not_answer_is_one_line_after_a_bounded_wait(tmp_path):
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = child_env(STORAGE_EMULATOR_HOST=dead, TENSORSTORE_GCS_HTTP_URL=dead, PRETRAX_STORAGE_TIMEOUT="3")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pretrax.cli", "train", os.path.abspath(CONFIG), *TINY,
                             "run.dir=gs://bucket/run"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "gs://bucket did not answer within 3 s" in err[0] and "PRETRAX_STORAGE_TIMEOUT" in err[0]
    assert time.monotonic() - start < 60
    assert os.listdir(tmp_path) == []


def test_metrics_rows_are_read_back_in_order_after_rewrites(gcs):
    """The metrics writer's own contract on GCS (no append): rows reach the object at flush and close."""
    from pretrax.train.metrics import MetricsWriter

    run_dir = gcs.make_bucket() + "/m"
    out = MetricsWriter(run_dir, 10, 0, progress=False)
    out.write(1, {"loss": 1.0})
    out.flush()
    assert metrics_steps(run_dir) == [1]
    out.write(2, {"loss": 0.5})
    out.write(3, {"loss": 0.25})
    out.close()
    assert metrics_steps(run_dir) == [1, 2, 3]
    again = MetricsWriter(run_dir, 10, 2, progress=False)  # a resume from step 2: step 3 is superseded
    again.write(3, {"loss": 0.3})
    again.close()
    assert [json.loads(line)["loss"] for line in storage.read_text(storage.join(run_dir, "metrics.jsonl")).splitlines()] \
        == [1.0, 0.5, 0.3]
    assert [json.loads(line)["step"] for line in
            storage.read_text(storage.join(run_dir, "metrics.superseded.jsonl")).splitlines()] == [3]


@pytest.mark.slow
def test_data_prepare_writes_to_a_bucket_and_training_reads_it(gcs, tmp_path, monkeypatch, capsys):
    """A tfds data_dir on gs://: prepare builds locally and uploads (dataset_info.json last); training reads
    the ArrayRecord files through a local mirror (ArrayRecord opens local files only), copied once."""
    from test_first_run import printed, write_corpus

    docs = write_corpus(tmp_path / "docs")
    data_dir = gcs.make_bucket() + "/tfds"
    monkeypatch.setenv("PRETRAX_CACHE_DIR", str(tmp_path / "cache"))
    assert cli_main(["data", "prepare", docs, "--name", "stdlib17", "--data-dir", data_dir]) == 0
    command = printed(capsys.readouterr().out, "(evaluating on its validation split) with: ")
    assert f"data.data_dir={data_dir}" in command
    uploaded = storage.listdir(f"{data_dir}/stdlib17/1.0.0")
    assert "dataset_info.json" in uploaded and any("validation.array_record" in n for n in uploaded)
    assert not os.path.exists(tmp_path / "gs:")

    overrides = ["data.source=tfds", "data.tfds_name=stdlib17", f"data.data_dir={data_dir}", "train.eval_every=3"]
    result = train(load(tmp_path / "run", *overrides), progress=False)
    assert result.final_step == 6 and np.isfinite(result.eval_loss)
    mirror = tmp_path / "cache" / "gs" / data_dir.removeprefix("gs://") / "stdlib17" / "1.0.0"
    assert sorted(os.listdir(mirror)) == uploaded
    before = {name: os.stat(mirror / name).st_mtime_ns for name in uploaded}
    train(load(tmp_path / "run2", *overrides), stop_at=1, progress=False)
    assert {name: os.stat(mirror / name).st_mtime_ns for name in uploaded} == before  # nothing copied again

    assert cli_main(["data", "prepare", docs, "--name", "stdlib17", "--data-dir", data_dir]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_sentencepiece_model_in_a_bucket_loads_as_the_local_one(gcs, tmp_path, monkeypatch):
    from test_first_run import write_corpus

    from pretrax.data.spm_train import train_sentencepiece
    from pretrax.data.tokenizer import load_tokenizer
    from pretrax.errors import ConfigError

    local = train_sentencepiece([write_corpus(tmp_path / "docs")], vocab_size=640, out=str(tmp_path / "t.model"))
    remote = gcs.make_bucket() + "/tokenizers/t.model"
    storage.write_bytes(remote, open(local, "rb").read())
    monkeypatch.setenv("PRETRAX_CACHE_DIR", str(tmp_path / "cache"))
    assert load_tokenizer(remote).fingerprint == load_tokenizer(local).fingerprint
    with pytest.raises(ConfigError, match="no such object"):
        load_tokenizer(remote.replace("t.model", "missing.model"))


@pytest.mark.slow
def test_scaling_fit_reads_a_results_file_in_a_bucket_and_writes_its_plot_there(gcs, tmp_path, capsys):
    """A pod sweep leaves results.csv in the bucket: `pretrax scaling fit gs://...` fits it where it is."""
    import csv
    import io

    n = [2e5, 5e5, 1e6, 2e6, 5e6]
    d = [1e7, 3e7, 1e8]
    out = io.StringIO()
    writer = csv.DictWriter(out, ["point", "params_non_embedding", "tokens", "eval_loss", "status"])
    writer.writeheader()
    for i, (params, tokens) in enumerate((p, t) for p in n for t in d):
        loss = 1.7 + 400 / params ** 0.34 + 410 / tokens ** 0.28
        writer.writerow({"point": f"p{i}", "params_non_embedding": params, "tokens": tokens, "eval_loss": loss,
                         "status": "ok"})
    sweep_dir = gcs.make_bucket() + "/sweeps/law"
    storage.write_text(f"{sweep_dir}/results.csv", out.getvalue())
    capsys.readouterr()
    assert cli_main(["scaling", "fit", f"{sweep_dir}/results.csv", "--bootstrap", "0", "--json", "--params",
                     "non_embedding", "--plot", f"{sweep_dir}/fit.png"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["E"] == pytest.approx(1.7, abs=0.05) and report["fit"]["runs"] == 15
    assert storage.read_bytes(f"{sweep_dir}/fit.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_objects_another_host_writes_are_seen_at_once(gcs):
    """gcsfs caches listings; a pod's hosts (and sweep workers) must see each other's objects immediately."""
    import urllib.request

    bucket = gcs.make_bucket()
    run_dir = bucket + "/run"
    storage.write_text(f"{run_dir}/mine.txt", "x")
    assert storage.listdir(run_dir) == ["mine.txt"] and not storage.isfile(f"{run_dir}/theirs.txt")
    name = bucket.removeprefix("gs://")
    upload = urllib.request.Request(f"{gcs.url}/upload/storage/v1/b/{name}/o?uploadType=media&name=run/theirs.txt",
                                    data=b"y", method="POST")  # straight to the server: another host's write
    urllib.request.urlopen(upload, timeout=10).read()
    assert storage.isfile(f"{run_dir}/theirs.txt") and storage.exists(f"{run_dir}/theirs.txt")
    assert storage.listdir(run_dir) == ["mine.txt", "theirs.txt"]
    assert storage.read_text(f"{run_dir}/theirs.txt") == "y"

"""Train loop: exact resume, cross-mesh restore, refused incompatible resumes, metrics, optimizer."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import cpu_xla_flags
from pretrax.errors import CheckpointError
from pretrax.train import checkpoint as ckpt
from pretrax.train.loop import train
from pretrax.train.optimizer import learning_rate_schedule
from pretrax.train.state import make_setup
from pretrax.parallel.mesh import make_mesh
from pretrax.config import OptimSection
from jax.sharding import PartitionSpec as P


@pytest.mark.slow
@pytest.mark.devices(8)
def test_resume_is_exact(tiny_cfg, tmp_path):
    """40 steps straight == 20 steps, stop, resume to 40: identical losses for steps 21..40."""
    common = ["train.steps=40", "checkpoint.every=10", "mesh.data=2", "mesh.fsdp=4"]
    straight = train(tiny_cfg(*common, run_dir=str(tmp_path / "a")), progress=False).losses
    first = train(tiny_cfg(*common, run_dir=str(tmp_path / "b")), stop_at=20, progress=False)
    assert max(first.losses) == 20 and ckpt.latest_step(str(tmp_path / "b")) == 20
    resumed = train(tiny_cfg(*common, run_dir=str(tmp_path / "b")), progress=False)
    assert resumed.start_step == 20
    assert [resumed.losses[s] for s in range(21, 41)] == [straight[s] for s in range(21, 41)]
    assert [first.losses[s] for s in range(1, 21)] == [straight[s] for s in range(1, 21)]
    # metrics.jsonl of the interrupted run holds steps 1..40 once each, in order
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 41))


@pytest.mark.slow
def test_checkpoint_keep_and_contents(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.steps=12", "checkpoint.every=3", "checkpoint.keep=2")
    train(cfg, progress=False)
    steps = sorted(int(d) for d in os.listdir(ckpt.checkpoint_dir(cfg.run.dir)) if d.isdigit())
    assert steps == [9, 12]
    with ckpt.open_manager(cfg.run.dir, cfg.checkpoint, read_only=True) as m:
        saved = ckpt.read_config(m, 12)
    assert saved == cfg.to_dict()
    assert os.path.isfile(os.path.join(cfg.run.dir, "config.yaml"))


RESTORE_ON_4 = textwrap.dedent(
    """
    import os, sys
    import jax, numpy as np
    from pretrax import config as config_lib
    from pretrax.data.tokenizer import load_tokenizer
    from pretrax.parallel.mesh import make_mesh
    from pretrax.train import checkpoint as ckpt
    from pretrax.train.state import make_setup, model_vocab_size
    run_dir, out = sys.argv[1], sys.argv[2]
    cfg = config_lib.load(os.path.join(run_dir, "config.yaml"), ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"])
    assert jax.device_count() == 4
    setup = make_setup(cfg, make_mesh(cfg.mesh), model_vocab_size(cfg, load_tokenizer("bytes").vocab_size))
    with ckpt.open_manager(run_dir, cfg.checkpoint, read_only=True) as m:
        state, data_state = ckpt.restore(m, m.latest_step(), setup.abstract_state())
    leaves = jax.tree.leaves(state["params"])
    assert all(len(x.sharding.device_set) == 4 for x in leaves)
    np.savez(out, *[np.asarray(x) for x in leaves], step=np.asarray(state["step"]))
    """
)


@pytest.mark.slow
@pytest.mark.devices(8)
def test_checkpoint_from_8_devices_restores_on_4(tiny_cfg, tmp_path):
    cfg = tiny_cfg("mesh.data=2", "mesh.fsdp=4", "train.steps=3")
    result = train(cfg, progress=False)
    expected = [np.asarray(x) for x in jax.tree.leaves(result.params)]
    out = tmp_path / "restored.npz"
    env = {**os.environ, "XLA_FLAGS": cpu_xla_flags(4)}
    proc = subprocess.run([sys.executable, "-c", RESTORE_ON_4, cfg.run.dir, str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = np.load(out)
    assert int(restored["step"]) == 3
    for i, x in enumerate(expected):
        np.testing.assert_array_equal(restored[f"arr_{i}"], x)


@pytest.mark.slow
def test_resume_with_different_model_is_refused(tiny_cfg):
    cfg = tiny_cfg("train.steps=3")
    train(cfg, progress=False)
    before = _snapshot(cfg.run.dir)
    with pytest.raises(CheckpointError, match=r"model\.d_model \(checkpoint 32, now 48\).*model\.n_layers"):
        train(tiny_cfg("train.steps=6", "model.d_model=48", "model.n_layers=3"), progress=False)
    with pytest.raises(CheckpointError, match=r"parametrization\.kind \(checkpoint 'sp', now 'mup'\)"):
        train(tiny_cfg("train.steps=6", "parametrization.kind=mup"), progress=False)
    assert _snapshot(cfg.run.dir) == before
    # how the same weights are computed may change: rematerialisation, the attention backend
    resumed = train(tiny_cfg("train.steps=4", "model.remat=full", "model.attention=splash", "data.seq_len=128"),
                    progress=False, allow_data_change=True)  # splash needs 128-token blocks
    assert resumed.start_step == 3 and resumed.final_step == 4


@pytest.mark.slow
@pytest.mark.devices(4)
def test_grad_accumulation_matches_one_big_batch(tiny_cfg, tmp_path):
    one = train(tiny_cfg("train.steps=3", run_dir=str(tmp_path / "one")), progress=False).losses
    acc = train(tiny_cfg("train.steps=3", "train.grad_accum=2", "mesh.fsdp=2", "mesh.tensor=2", run_dir=str(tmp_path / "acc")),
                progress=False).losses
    np.testing.assert_allclose([acc[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)], rtol=1e-5)


@pytest.mark.slow
def test_metrics_jsonl_and_tensorboard(tiny_cfg):
    cfg = tiny_cfg("train.steps=4", "train.log_every=2", "train.eval_every=4")
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert "eval_loss" in rows[-1] and 0 < rows[-1]["eval_bits_per_byte"] < 10
    assert rows[-1]["eval_bits_per_byte"] == pytest.approx(result.eval_bits_per_byte)
    tags = _tensorboard_tags(os.path.join(cfg.run.dir, "tensorboard"))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "eval_bits_per_byte"} <= tags


def test_weight_decay_skips_norms_and_biases(tiny_cfg):
    cfg = tiny_cfg("model.use_bias=true", "model.scan_layers=true")
    setup = make_setup(cfg, make_mesh(cfg.mesh), 384)
    mask = jax.tree.leaves(setup.param_groups.decay_mask())
    specs = jax.tree_util.tree_leaves_with_path(setup.logical_specs, is_leaf=lambda s: isinstance(s, P))
    biases = 0
    for decayed, (path, spec) in zip(mask, specs):
        names = [n for n in spec if n != "layers"]
        is_bias = [str(k.key) for k in path if hasattr(k, "key")][-1] == "bias"
        biases += is_bias
        assert decayed == (len(names) >= 2 and not is_bias), (path, spec)
    assert biases and any(mask) and not all(mask)


def test_learning_rate_schedule():
    lr = learning_rate_schedule(OptimSection(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
    assert float(lr(0)) == pytest.approx(0.1) and float(lr(9)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.55, abs=1e-3)  # half-way down the cosine
    assert float(lr(110)) == pytest.approx(0.1)
    # T5's: held at lr for warmup_steps, then lr * sqrt(warmup / step) (T5X: 0.01 until 10k, 0.005 at 40k)
    t5 = learning_rate_schedule(OptimSection(lr=1e-2, warmup_steps=10_000, schedule="rsqrt"), 100_000)
    assert [float(t5(s)) for s in (0, 10_000, 40_000)] == pytest.approx([1e-2, 1e-2, 5e-3])


def _snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[p] = (os.path.getmtime(p), open(p, "rb").read())
    return out


def _tensorboard_tags(logdir):
    from tensorboardX.proto import event_pb2

    tags = set()
    for name in os.listdir(logdir):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + length + 4
    return tags


@pytest.mark.slow
def test_ul2_decoder_logs_loss_per_denoiser(tmp_path):
    from pretrax import config as config_lib

    cfg = config_lib.load("configs/ul2r_tiny_decoder.yaml", [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "train.batch_size=8",
        "train.steps=2", "train.log_every=1", "train.eval_every=0", "train.sample_tokens=0",
        f"run.dir={tmp_path / 'ul2'}",
    ])
    train(cfg, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "ul2" / "metrics.jsonl")]
    for row in rows:
        present = [k for k in ("loss_R", "loss_S", "loss_X") if k in row]
        assert present, row
        assert all(np.isfinite(row[k]) and row[k] > 0 for k in present)
        # the total is the token-weighted mean of the per-denoiser losses, so it lies between them
        assert min(row[k] for k in present) - 1e-4 <= row["loss"] <= max(row[k] for k in present) + 1e-4


@pytest.mark.slow
def test_bits_per_byte_by_hand_for_a_model_that_predicts_uniformly(tiny_cfg):
    """All-zero weights give uniform logits: every target costs ln V nats, so held-out bits per byte is
    log2(V) x targets / target bytes, and with byte tokens a target is one byte unless it is a special id."""
    import math

    import jax.numpy as jnp

    from pretrax.data.pipeline import eval_batches
    from pretrax.data.tokenizer import ByteTokenizer, config_tokenizer
    from pretrax.train.evaluation import make_evaluator
    from pretrax.train.state import init_state, model_vocab_size

    cfg = tiny_cfg("train.eval_batches=2")
    tok = config_tokenizer(cfg.data)
    vocab = model_vocab_size(cfg, tok.vocab_size)
    setup = make_setup(cfg, make_mesh(cfg.mesh), vocab)
    params = jax.tree.map(jnp.zeros_like, init_state(setup, 0)["params"])
    result = make_evaluator(cfg, setup, tok)(params)
    batches = eval_batches(cfg, 2, cfg.train.batch_size)
    targets = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in batches])
    first = ByteTokenizer.byte_offset
    n_bytes = int(np.sum((targets >= first) & (targets < first + 256)))
    assert 0 < n_bytes <= len(targets)  # an end-of-document target stands for no byte
    assert result["eval_loss"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert result["eval_bits_per_byte"] == pytest.approx(math.log2(vocab) * len(targets) / n_bytes, rel=1e-5)

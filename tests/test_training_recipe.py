"""The T5 / GPT-1 training recipe: Adafactor (and its muP form), z-loss, dropout (issue 16, items 4 and 8)."""

import dataclasses
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pretrax import config as config_lib
from pretrax.cli import main
from pretrax.config import ModelSection, OptimSection, ParametrizationSection
from pretrax.data.tokenizer import load_tokenizer
from pretrax.generate import sample
from pretrax.models import make_model
from pretrax.models.layers import dropout
from pretrax.models.param_groups import param_table
from pretrax.models.parametrization import resolve
from pretrax.parallel.mesh import make_mesh
from pretrax.data.pipeline import make_train_iterator
from pretrax.train import checkpoint as ckpt
from pretrax.train.loop import train
from pretrax.train.optimizer import make_optimizer
from pretrax.train.state import build_model, init_state, make_setup, model_vocab_size
from pretrax.train.step import _grads, dropout_key, logits_of, make_train_step, to_global, z_loss_terms

V = 61


def abstract_params(cfg):
    """Shapes and logical names of a config's model, no memory used."""
    model = nnx.eval_shape(lambda: build_model(cfg, model_vocab_size(cfg, 256), 0))
    _, params = nnx.split(model, nnx.Param)
    return params, nnx.get_partition_spec(params)


def state_bytes(tx, params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def decoder_batch(rows=8, length=32, seed=0):
    toks = np.random.default_rng(seed).integers(0, 256, (rows, length + 1)).astype(np.int32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
            "loss_mask": np.ones((rows, length), np.float32), "bidirectional": np.zeros((rows, length), np.int32)}


def tiny_setup(tiny_cfg, *overrides):
    cfg = tiny_cfg("model.n_layers=1", *overrides)
    setup = make_setup(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), 256)  # one device: the quickest compile
    return setup, init_state(setup, cfg.run.seed)


# ---------------------------------------------------------------- Adafactor


@pytest.mark.slow
def test_adafactor_state_is_factored_and_a_fraction_of_adams():
    # a real model's optimizer state, counted from shapes: Adam keeps two full moments (8 bytes a parameter),
    # Adafactor a row and a column statistic per matrix (attention kernels factored as D x (heads * head_dim));
    # T5.1.1-base: 1,980,622,856 bytes under AdamW, 2,153,840 under Adafactor
    cfg = config_lib.load("configs/t5_1_1_base.yaml")  # trains with Adafactor, as T5 did
    params, specs = abstract_params(cfg)
    n = sum(x.size for x in jax.tree.leaves(params))
    adam = state_bytes(make_optimizer(cfg.replace(**{"optim.name": "adamw"}).optim, 100, specs), params)
    adafactor = state_bytes(make_optimizer(cfg.optim, 100, specs), params)
    assert adam >= 8 * n
    assert adafactor < 0.003 * adam, (adafactor, adam)


def test_adafactor_is_optax_adafactor_with_t5_settings():
    # no factors, no decay, no global clipping: the chain is optax.adafactor(lr) with T5X's defaults
    # (factored, decay 0.8, update clipping 1, parameter scale, no momentum)
    cfg = OptimSection(name="adafactor", lr=0.01, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=0)
    from jax.sharding import PartitionSpec as P

    params = {"w": jax.random.normal(jax.random.key(0), (256, 160)) * 0.05, "b": jnp.zeros((160,)),
              "v": jnp.ones((16, 8))}
    specs = {"w": P("embed", "mlp"), "b": P("norm"), "v": P("embed", "mlp")}
    ours, ref = make_optimizer(cfg, 10, specs), optax.adafactor(0.01)
    s1, s2, p1, p2 = ours.init(params), ref.init(params), params, params
    assert s1[0][0].v["w"].shape == (1,) and s1[0][0].v["v"].shape == (16, 8)  # factored, and too small to be

    @jax.jit
    def steps(p1, s1, p2, s2):
        for i in range(3):
            g = jax.tree.map(lambda x: jax.random.normal(jax.random.key(i + 1), x.shape), params)
            (u1, s1), (u2, s2) = ours.update(g, s1, p1), ref.update(g, s2, p2)
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        return p1, p2

    p1, p2 = steps(p1, s1, p2, s2)
    for k in params:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-5, atol=1e-7)


def test_adafactor_treats_a_scanned_stack_as_its_layers():
    # scan_layers stacks the layers' weights on a 'layers' axis; the second moments, the update clipping
    # and the relative step are each layer's own, as without scan (two layers of very different scales)
    from jax.sharding import PartitionSpec as P

    cfg = OptimSection(name="adafactor", lr=0.01, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=0)
    stacked, single = (make_optimizer(cfg, 10, {"w": spec}) for spec in (P("layers", "embed", "mlp"),
                                                                         P("embed", "mlp")))
    w = [jax.random.normal(jax.random.key(i), (128, 160)) * s for i, s in enumerate((0.02, 0.5))]
    g = [jax.random.normal(jax.random.key(10 + i), (128, 160)) * s for i, s in enumerate((1.0, 1e3))]

    @jax.jit
    def updates():
        p, grads = {"w": jnp.stack(w)}, {"w": jnp.stack(g)}
        return (stacked.update(grads, stacked.init(p), p)[0]["w"],
                [single.update({"w": g[i]}, single.init({"w": w[i]}), {"w": w[i]})[0]["w"] for i in range(2)])

    both, each = updates()
    for i in range(2):
        np.testing.assert_allclose(both[i], each[i], rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_mup_hidden_update_entries_shrink_as_one_over_width():
    # muP asks a hidden matrix's update entries to scale as 1/m (Adam: lr/m). Adafactor's step is
    # lr * factor * RMS(W), RMS(W) ~ 1/sqrt(m) under muP init, so its factor must be 1/sqrt(m); the
    # embedding's step stays the same at every width.
    p = ParametrizationSection(kind="mup", base_d_model=128, zero_init_query=False, zero_init_readout=False)
    rms = {}
    for width in (128, 512):
        cfg = ModelSection(d_model=width, d_ff=width, n_layers=1, n_heads=4)
        build = lambda: make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=0),  # noqa: E731
                                   parametrization=p)
        specs = nnx.get_partition_spec(nnx.state(nnx.eval_shape(build), nnx.Param))
        factors = {name: param_table(specs, parametrization=resolve(cfg, p), optimizer=name).lr_multipliers()
                   for name in ("adamw", "adafactor")}
        txs = {name: make_optimizer(OptimSection(name=name, lr=0.01, warmup_steps=0, schedule="constant",
                                                 weight_decay=0.0, clip_norm=0), 10, specs, f)
               for name, f in factors.items()}

        @jax.jit
        def first_updates():  # the model is built inside: one compile instead of an eager op per weight
            params = nnx.state(build(), nnx.Param)
            grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
            return {name: jax.tree.map(lambda u: jnp.sqrt(jnp.mean(jnp.square(u))),
                                       tx.update(grads, tx.init(params), params)[0])
                    for name, tx in txs.items()}

        rms[width] = {(name, jax.tree_util.keystr(k)): float(v) for name, tree in first_updates().items()
                      for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    checked = 0
    for key in rms[128]:
        ratio = rms[512][key] / rms[128][key]
        if any(n in key[1] for n in ("'up'", "'gate'", "'down'", "'query'", "'value'")) and "kernel" in key[1]:
            assert ratio == pytest.approx(1 / 4, rel=0.15), (key, ratio)
            checked += 1
        if "'embed'" in key[1]:
            assert ratio == pytest.approx(1.0, rel=0.15), (key, ratio)
    assert checked == 10
    assert resolve(ModelSection(d_model=512), p).lr_mult("hidden", "adafactor") == pytest.approx(0.5)


# ---------------------------------------------------------------- z-loss


def test_z_loss_value_and_gradient_by_hand():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    z = 0.1
    log_z = np.array([math.log(math.e + math.e**2 + math.e**0.5), math.log(3.0)])
    np.testing.assert_allclose(z_loss_terms(logits, z), z * log_z**2, rtol=1e-6)
    # d/dlogits z log(Z)^2 = 2 z log(Z) softmax(logits)  (T5X's cross_entropy_with_logits backward)
    softmax = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    grad = jax.grad(lambda x: z_loss_terms(x, z).sum())(logits)
    np.testing.assert_allclose(grad, 2 * z * log_z[:, None] * softmax, rtol=1e-5)


# ---------------------------------------------------------------- dropout


def test_dropout_drops_at_its_rate_and_keeps_the_mean():
    x = jnp.ones((200, 100))
    y = np.asarray(dropout(x, 0.25, jax.random.key(0)))
    assert np.mean(y == 0) == pytest.approx(0.25, abs=0.01)
    assert y.mean() == pytest.approx(1.0, abs=0.02)
    assert dropout(x, 0.25, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_dropout_acts_only_with_a_key(kind):
    # the train step passes a key; evaluation, scoring and sampling pass none, and then the model with
    # dropout 0.5 is the model without dropout (same weights, same logits)
    extra = dict(kind=kind, positions="relative") if kind == "encoder_decoder" else {}
    cfg = ModelSection(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.5, **extra)
    off = dataclasses.replace(cfg, dropout=0.0)
    g, params = nnx.split(make_model(cfg, vocab_size=V, max_seq_len=16, rngs=nnx.Rngs(params=0)), nnx.Param)
    g0 = nnx.split(nnx.eval_shape(lambda: make_model(off, vocab_size=V, max_seq_len=16, rngs=nnx.Rngs(params=0))),
                   nnx.Param)[0]
    batch = {k: jnp.asarray(v % V) for k, v in decoder_batch(rows=2, length=16).items()}
    if kind == "encoder_decoder":
        batch.update(encoder_inputs=batch["targets"], encoder_segment_ids=batch["segment_ids"],
                     encoder_positions=batch["positions"])
    without = jax.jit(lambda p: (logits_of(nnx.merge(g0, p), batch), logits_of(nnx.merge(g, p), batch)))
    train_mode = jax.jit(lambda p, key: logits_of(nnx.merge(g, p), batch, key))
    base, no_key = without(params)
    np.testing.assert_array_equal(no_key, base)
    a, b = train_mode(params, jax.random.key(1)), train_mode(params, jax.random.key(2))
    np.testing.assert_array_equal(a, train_mode(params, jax.random.key(1)))  # a key fixes the masks
    assert not np.allclose(a, base) and not np.allclose(a, b)


def test_dropout_key_follows_the_seed_and_the_step(tiny_cfg):
    # the key comes from the state's rng (from run.seed, saved in every checkpoint) and step: each step
    # draws new masks, a resumed run draws the same ones
    on, off = (types.SimpleNamespace(cfg=tiny_cfg(f"model.dropout={d}")) for d in (0.1, 0.0))

    def key(seed, step):
        state = {"rng": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)), "step": jnp.int32(step)}
        return np.asarray(jax.random.key_data(dropout_key(on, state)))

    assert np.array_equal(key(0, 5), key(0, 5))
    assert not np.array_equal(key(0, 5), key(0, 6)) and not np.array_equal(key(0, 5), key(1, 5))
    assert dropout_key(off, {"rng": None, "step": 0}) is None


@pytest.mark.slow
def test_sampling_ignores_dropout(tiny_cfg):
    with_dropout, state = tiny_setup(tiny_cfg, "model.dropout=0.5", "data.seq_len=16")
    plain, _ = tiny_setup(tiny_cfg, "data.seq_len=16")
    tok = load_tokenizer("bytes")
    texts = [sample(s, state["params"], tok, "def ", max_new_tokens=4, seed=3) for s in (with_dropout, plain)]
    assert texts[0] == texts[1]


# ---------------------------------------------------------------- the recipe trains and resumes exactly


@pytest.mark.slow
def test_adafactor_z_loss_dropout_train_and_resume_exactly(tiny_cfg, tmp_path):
    """One setup (Adafactor, z-loss, dropout): the step's gradient is cross-entropy + z-loss with this
    step's dropout masks; `loss` logs the cross-entropy and `z_loss` the z-loss; 12 steps lower the loss;
    6 steps, an Orbax checkpoint, a restore and 6 more give the same losses as 12 straight."""
    z = 0.01
    setup, state = tiny_setup(tiny_cfg, "optim.name=adafactor", "optim.lr=0.1", "optim.warmup_steps=2",
                              f"train.z_loss={z}", "model.dropout=0.1", "train.steps=12")
    data = make_train_iterator(setup.cfg)
    batches = [to_global(setup, next(data)) for _ in range(12)]
    data.close()
    batch, key = batches[0], dropout_key(setup, state)

    @jax.jit
    def by_hand(params):
        def parts(p):
            logits = logits_of(nnx.merge(setup.graphdef, p), batch, key)  # step 1's masks
            mask = batch["loss_mask"]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * mask
            z_sum = jnp.sum(z_loss_terms(logits, z) * mask)
            return jnp.sum(ce) + z_sum, (jnp.sum(ce) / jnp.sum(mask), z_sum / jnp.sum(mask))

        (_, (ce, z_mean)), grad = jax.value_and_grad(parts, has_aux=True)(params)
        return ce, z_mean, grad, _grads(setup, params, batch, key)[2]

    ce, z_mean, grad, step_grad = by_hand(state["params"])
    for a, b in zip(jax.tree.leaves(step_grad), jax.tree.leaves(grad)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)

    step = make_train_step(setup)
    fresh = jax.tree.map(jnp.copy, state)
    straight = []
    for i, b in enumerate(batches):
        state, metrics = step(state, b)
        straight.append(float(metrics["loss"]))
        if i == 0:
            assert float(metrics["loss"]) == pytest.approx(float(ce), rel=1e-6)
            assert float(metrics["z_loss"]) == pytest.approx(float(z_mean), rel=1e-5) and float(z_mean) > 0
    assert np.mean(straight[-3:]) < straight[0] - 1.0, straight

    state = fresh
    for b in batches[:6]:
        state, _ = step(state, b)
    manager = ckpt.open_manager(str(tmp_path / "run"), setup.cfg.checkpoint)
    ckpt.save(manager, 6, state, {}, setup.cfg)
    ckpt.wait(manager)
    del state
    state, _ = ckpt.restore(manager, 6, setup.abstract_state())
    manager.close()
    resumed = []
    for b in batches[6:]:
        state, metrics = step(state, b)
        resumed.append(float(metrics["loss"]))
    assert resumed == straight[6:]


@pytest.mark.slow
def test_the_trainer_logs_z_loss(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.z_loss=1e-4", "model.n_layers=1", "train.steps=2", "train.log_every=1",
                   "train.eval_batches=1", "train.sample_tokens=0")
    train(cfg, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(0 < r["z_loss"] < 0.01 for r in rows), rows


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,words", [
    (["optim.name=adafactor", "optim.mu_dtype=bfloat16"],
     "optim.mu_dtype is Adam's and unused by optim.name=adafactor"),
    (["optim.name=adafactor", "optim.b1=0.8", "optim.b2=0.99"], "optim.b1, optim.b2 are Adam's"),
    (["train.z_loss=-1e-4"], "config key 'train.z_loss' must be >= 0"),
    (["model.dropout=1"], "config key 'model.dropout' must be in [0, 1), got 1.0"),
    (["model.dropout=-0.1"], "config key 'model.dropout' must be in [0, 1), got -0.1"),
    (["model.dropout=0.1", "model.attention=splash"], "model.dropout drops attention probabilities"),
])
def test_bad_recipe_settings_are_one_line_exit_2_nothing_written(overrides, words, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "configs/tiny.yaml", f"run.dir={run_dir}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not run_dir.exists()

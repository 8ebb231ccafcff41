"""muP (models/parametrization.py): at the base width it is SP exactly; away from it the
init variances, per-parameter LRs, weight decay, forward multipliers and zero inits follow
Tensor Programs V's Table 8; both model kinds; bad input is one line."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pretrax.config import ModelSection, ParametrizationSection, load
from pretrax.coordcheck import layer_coords
from pretrax.data.pipeline import make_train_iterator
from pretrax.errors import ConfigError
from pretrax.models import EncoderDecoder, make_model
from pretrax.models.param_groups import param_table
from pretrax.models.parametrization import resolve
from pretrax.parallel.mesh import make_mesh
from pretrax.train.optimizer import learning_rate_schedule, make_optimizer
from pretrax.train.state import init_state, make_setup
from pretrax.train.step import make_train_step, to_global

V = 384
MUP_AT_BASE = ("parametrization.kind=mup", "parametrization.zero_init_query=false",
               "parametrization.zero_init_readout=false")
DECODER = ModelSection(d_model=32, n_layers=2, n_heads=4, d_ff=64, tie_embeddings=False)
ENC_DEC = ModelSection(kind="encoder_decoder", d_model=32, n_layers=2, n_encoder_layers=3, n_heads=4, d_ff=48,
                       positions="relative", relative_buckets=8, relative_max_distance=16, activation="geglu",
                       tie_embeddings=False)


def mup(**kw) -> ParametrizationSection:
    return ParametrizationSection(kind="mup", **kw)


def params_of(cfg: ModelSection, parametrization=None, seed=0) -> dict:
    model = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=seed), parametrization=parametrization)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flat(tree: dict) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _train(cfg, steps=3):
    setup = make_setup(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), V)  # one device: the quickest compile
    state = init_state(setup, cfg.run.seed)
    first = jax.device_get(state["params"])
    train_step, data = make_train_step(setup), make_train_iterator(cfg)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, to_global(setup, next(data)))
        losses.append(float(metrics["loss"]))
    data.close()
    return first, losses, jax.device_get(state["params"])


# ---------------------------------------------------------------- at the base width muP is SP


@pytest.mark.slow
def test_mup_at_base_width_and_depth_is_sp_exactly(tiny_cfg):
    # untied readout and a depth rule at ratio 1, so every muP code path runs; the zero inits off
    common = ("model.tie_embeddings=false", "model.use_bias=true", "model.n_layers=1")
    sp = _train(tiny_cfg(*common))
    mu = _train(tiny_cfg(*common, *MUP_AT_BASE, "parametrization.base_d_model=32", "parametrization.depth_alpha=1",
                         "parametrization.base_n_layers=1"))
    assert jax.tree.all(jax.tree.map(np.array_equal, sp[0], mu[0]))  # initial parameters
    assert sp[1] == mu[1]  # three training losses, bit for bit
    assert jax.tree.all(jax.tree.map(np.array_equal, sp[2], mu[2]))  # parameters after three AdamW steps


@pytest.mark.slow
def test_mup_at_base_width_is_sp_for_the_encoder_decoder():
    sp, mu = params_of(ENC_DEC), params_of(ENC_DEC, mup(zero_init_query=False, zero_init_readout=False))
    assert jax.tree.all(jax.tree.map(np.array_equal, sp, mu))
    rng = np.random.default_rng(0)
    enc, dec = (jnp.asarray(rng.integers(1, V, (2, n)), jnp.int32) for n in (12, 7))
    forward = nnx.jit(lambda model: model(enc, dec))
    out = [forward(make_model(ENC_DEC, vocab_size=V, max_seq_len=0, rngs=nnx.Rngs(params=0), parametrization=p))
           for p in (None, mup(zero_init_query=False, zero_init_readout=False))]
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("cfg", [DECODER, dataclasses.replace(DECODER, tie_embeddings=True), ENC_DEC],
                         ids=["decoder", "tied", "encoder_decoder"])
def test_zero_init_options_zero_queries_and_untied_readout_only(cfg):
    sp, mu = flat(params_of(cfg)), flat(params_of(cfg, mup()))
    queries = {k for k in mu if "'query'" in k and "kernel" in k}
    readout = {k for k in mu if "'unembed'" in k}
    assert queries and bool(readout) == (not cfg.tie_embeddings)
    zeroed = queries | readout
    if cfg.kind == "encoder_decoder":
        assert any("'cross'" in k for k in zeroed)  # cross-attention queries too
    for k in mu:
        if k in zeroed:
            assert not mu[k].any(), k
        else:
            np.testing.assert_array_equal(mu[k], sp[k], err_msg=k)  # the key stream is unchanged


# ---------------------------------------------------------------- away from the base width


def _std(params: dict, *needles: str) -> float:
    vals = [v for k, v in flat(params).items() if all(n in k for n in needles)]
    return float(np.std(np.concatenate([v.ravel() for v in vals])))


@pytest.mark.slow
def test_init_variance_scales_as_one_over_fan_in():
    # m = 4: hidden stds / 2 (variance / 4); embeddings and readout keep init_std; SP never changes
    small, wide = dataclasses.replace(DECODER, d_model=32, d_ff=128), dataclasses.replace(DECODER, d_model=128, d_ff=512)
    p = mup(base_d_model=32, zero_init_query=False, zero_init_readout=False)
    for cfg, m in ((small, 1), (wide, 4)):
        mu, sp = params_of(cfg, p), params_of(cfg)
        for needle in ("'query'", "'key'", "'up'", "'gate'"):
            assert _std(mu, needle) == pytest.approx(0.02 / math.sqrt(m), rel=0.05), (m, needle)
            assert _std(sp, needle) == pytest.approx(0.02, rel=0.05), (m, needle)
        for needle in ("'out'", "'down'"):  # residual projections: init_std / sqrt(2 n_layers), then / sqrt(m)
            assert _std(mu, needle) == pytest.approx(0.02 / math.sqrt(4 * m), rel=0.05), (m, needle)
        for needle in ("'embed'", "'unembed'"):
            assert _std(mu, needle) == pytest.approx(0.02, rel=0.05), (m, needle)


def test_per_parameter_lr_factors_follow_the_roles():
    cfg = load(None, ["model.d_model=128", "model.n_heads=4", "model.d_ff=256", "model.n_layers=4",
                      "model.use_bias=true", "model.scan_layers=true", "model.positions=learned",
                      "model.tie_embeddings=false", "parametrization.kind=mup", "parametrization.base_d_model=32",
                      "parametrization.depth_alpha=0.5", "parametrization.base_n_layers=1"])
    setup = make_setup(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), V)
    factors = flat(nnx.to_pure_dict(setup.param_groups.lr_multipliers()))
    # m = 4, r = 4, alpha = 1/2: hidden Adam LR x 1/m x r^(alpha - 1) = 1/8; everything else x 1
    for k, f in factors.items():
        hidden = "kernel" in k and "unembed" not in k
        assert f == (0.125 if hidden else 1.0), k
    assert sum(f == 0.125 for f in factors.values()) == 7  # q, k, v, o, gate, up, down (stacked over layers)
    assert {k for k, f in factors.items() if f == 1.0} >= {"['embed']['table']", "['positions']['table']",
                                                            "['unembed']['kernel']", "['final_norm']['scale']"}
    assert resolve(cfg.model, cfg.parametrization).branch_mult == 0.5  # r^-alpha


def test_lr_factors_of_the_encoder_decoder():
    section = mup(base_d_model=16)
    model = nnx.eval_shape(lambda: EncoderDecoder(ENC_DEC, vocab_size=V, rngs=nnx.Rngs(0), parametrization=section))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    factors = flat(nnx.to_pure_dict(param_table(specs, parametrization=resolve(ENC_DEC, section)).lr_multipliers()))
    assert factors["['decoder']['blocks'][0]['cross']['query']['kernel']"] == 0.5
    assert factors["['encoder']['blocks'][2]['mlp']['down']['kernel']"] == 0.5
    for name in ("['encoder']['relpos']['embedding']", "['embed']['table']", "['unembed']['kernel']",
                 "['decoder']['final_norm']['scale']"):
        assert factors[name] == 1.0, name


def test_weight_decay_stays_lr_times_wd_while_adam_is_scaled():
    # one hidden matrix with factor 1/4: decay must be lr * wd * w, the Adam step lr * sign(g) / 4
    optim = load(None, ["optim.weight_decay=0.5", "optim.clip_norm=0", "optim.warmup_steps=0"]).optim
    params = {"w": jnp.full((4, 4), 2.0)}
    specs = {"w": P("embed", "mlp")}
    lr = float(learning_rate_schedule(optim, 10)(0))
    for factor in (1.0, 0.25):
        tx = make_optimizer(optim, 10, specs, {"w": factor})
        still, _ = tx.update({"w": jnp.zeros((4, 4))}, tx.init(params), params)
        np.testing.assert_allclose(still["w"], -lr * 0.5 * 2.0, rtol=1e-6)  # zero gradient: decay only
        moved, _ = tx.update({"w": jnp.ones((4, 4))}, tx.init(params), params)
        np.testing.assert_allclose(moved["w"], -lr * (factor * 1.0 + 0.5 * 2.0), rtol=1e-6)
    # the plain AdamW (sp) gives the factor-1 numbers
    tx = make_optimizer(optim, 10, specs)
    moved, _ = tx.update({"w": jnp.ones((4, 4))}, tx.init(params), params)
    np.testing.assert_allclose(moved["w"], -lr * (1.0 + 0.5 * 2.0), rtol=1e-6)
    assert jax.tree.leaves(param_table(specs).decay_mask()) == [True]


def test_scale_weight_decay_gives_the_decay_the_lr_factor_too():
    # parametrization.scale_weight_decay (MuAdamW's decoupled_wd=True): decay lr * factor * wd * w
    cfg = load(None, ["optim.weight_decay=0.5", "optim.clip_norm=0", "optim.warmup_steps=0",
                      "parametrization.kind=mup", "parametrization.scale_weight_decay=true"])
    assert cfg.parametrization.scale_weight_decay
    params = {"w": jnp.full((4, 4), 2.0)}
    lr = float(learning_rate_schedule(cfg.optim, 10)(0))
    for name in ("adamw", "adafactor"):
        optim = dataclasses.replace(cfg.optim, name=name)
        tx = make_optimizer(optim, 10, {"w": P("embed", "mlp")}, {"w": 0.25}, scale_decay=True)
        still, _ = tx.update({"w": jnp.zeros((4, 4))}, tx.init(params), params)
        np.testing.assert_allclose(still["w"], -lr * 0.25 * 0.5 * 2.0, rtol=1e-6, err_msg=name)


# ---------------------------------------------------------------- forward multipliers


@pytest.mark.slow
def test_output_and_input_multipliers_and_attention_scale():
    # head_dim fixed, so the attention scale is SP's: with SP's weights loaded, muP's logits are SP's x alpha_out/m
    cfg = dataclasses.replace(DECODER, d_model=64, head_dim=8, n_heads=8, d_ff=128, tie_embeddings=True)
    section = mup(base_d_model=16, alpha_out=3.0, alpha_in=2.0)
    sp_model = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=0))
    mu_model = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=1), parametrization=section)
    nnx.update(mu_model, nnx.state(sp_model, nnx.Param))
    batch = {"inputs": jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 16)), jnp.int32),
             "positions": None, "segment_ids": None, "bidirectional": None}
    sp_out, mu_out = (jax.device_get(nnx.jit(layer_coords)(m, batch)) for m in (sp_model, mu_model))
    assert mu_out["embed"] == pytest.approx(2.0 * sp_out["embed"], rel=1e-6)  # alpha_in
    assert mu_model.blocks[0].attn.scale == sp_model.blocks[0].attn.scale == 8**-0.5
    # head dim growing with width: q.k * sqrt(base head dim) / head dim
    grown = resolve(dataclasses.replace(cfg, head_dim=0, n_heads=4), section)  # head dim 16, base 4
    assert grown.attention_scale(16) == pytest.approx(math.sqrt(4) / 16)
    assert resolve(cfg, section).output_mult == pytest.approx(3.0 / 4)
    # the logits: alpha_in changes the residual stream, so compare at alpha_in = 1
    plain = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=1),
                       parametrization=mup(base_d_model=16, alpha_out=3.0))
    nnx.update(plain, nnx.state(sp_model, nnx.Param))
    np.testing.assert_allclose(plain(batch["inputs"]), sp_model(batch["inputs"]) * 0.75, rtol=1e-5, atol=1e-6)


def test_depth_multiplier_scales_every_residual_branch():
    cfg = dataclasses.replace(DECODER, n_layers=4)
    section = ParametrizationSection(depth_alpha=1.0, base_n_layers=1)  # sp + depth transfer: branches x 1/4
    sp_model = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=0))
    deep = make_model(cfg, vocab_size=V, max_seq_len=32, rngs=nnx.Rngs(params=0), parametrization=section)
    # the residual projections start at the base depth's std: init_std / sqrt(2 * 1)
    assert _std(nnx.to_pure_dict(nnx.state(deep, nnx.Param)), "'down'") == pytest.approx(0.02 / math.sqrt(2), rel=0.05)
    nnx.update(deep, nnx.state(sp_model, nnx.Param))
    batch = {"inputs": jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 16)), jnp.int32),
             "positions": None, "segment_ids": None, "bidirectional": None}
    sp_out, deep_out = (jax.device_get(nnx.jit(layer_coords)(m, batch)) for m in (sp_model, deep))
    assert deep_out["blocks.0.attn"] == pytest.approx(sp_out["blocks.0.attn"] / 4, rel=1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, words", [
    (["parametrization.kind=mup", "parametrization.base_d_model=30"], "base_d_model (30) must be divisible"),
    (["parametrization.depth_alpha=-1"], "parametrization.depth_alpha"),
    (["parametrization.alpha_out=0"], "alpha_out"),
])
def test_bad_parametrization_is_one_line(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as err:
        load(None, ["model.d_model=64", "model.n_heads=4", *overrides])
    assert "\n" not in str(err.value)

"""The decoder: parameter counts, attention against a numpy reference, masks,
packing, scan/remat equivalence, precision and logical axis names."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.config import DEFAULT_RULES, ModelSection
from pretrax.errors import ConfigError
from pretrax.models import Decoder, count_params
from pretrax.models.attention import Attention
from pretrax.models.attention_backends import AttentionMask
from pretrax.models.positions import rope_angles

V, T = 61, 12

GPT1 = ModelSection(
    d_model=768, n_layers=12, n_heads=12, d_ff=3072, positions="learned", norm="layernorm",
    norm_position="post", norm_eps=1e-5, final_norm=False, activation="gelu", use_bias=True, tie_embeddings=True,
)
# small shapes of the two families the decoder covers
GPT1_TINY = dataclasses.replace(GPT1, d_model=32, n_layers=2, n_heads=4, d_ff=64)
MODERN_TINY = ModelSection(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)  # pre-RMSNorm, RoPE, SwiGLU


def make(cfg, seed=0, vocab_size=V):
    return Decoder(cfg, vocab_size=vocab_size, max_seq_len=32, rngs=nnx.Rngs(seed))


@jax.jit
def _forward(graphdef, params, tokens, positions, segment_ids, bidirectional):
    # the way the trainer uses the model: split outside jit, merge inside
    return nnx.merge(graphdef, params)(tokens, positions=positions, segment_ids=segment_ids,
                                       bidirectional=bidirectional)


def logits(model, tokens, positions=None, segment_ids=None, bidirectional=None):
    graphdef, params = nnx.split(model, nnx.Param)
    return np.asarray(_forward(graphdef, params, jnp.asarray(tokens), positions, segment_ids, bidirectional))


def load(model, weights):
    """Set a model's weights from a plain nested dict, keeping its own metadata (axis names)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, weights)
    nnx.update(model, state)


def tokens_of(seed, shape=(2, T)):
    return np.random.default_rng(seed).integers(0, V, shape).astype(np.int32)


# ---------------------------------------------------------------- size


def test_gpt1_has_its_published_parameter_count():
    assert count_params(GPT1, vocab_size=40478, max_seq_len=512) == 116_534_784


@pytest.mark.parametrize("scaling", [True, False], ids=["gpt2", "gpt1"])
def test_residual_projections_start_scaled_or_plain(scaling):
    # GPT-2: attention out and MLP down start at init_std / sqrt(2 n_layers); GPT-1: everything N(0, init_std)
    cfg = dataclasses.replace(GPT1_TINY, d_model=64, d_ff=256, n_layers=8, residual_init_scaling=scaling)
    params = nnx.to_pure_dict(nnx.state(make(cfg), nnx.Param))
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}

    def std(*needles):
        return float(np.std(np.concatenate([v.ravel() for k, v in flat.items()
                                            if all(n in k for n in needles)])))

    residual = 0.02 / 4 if scaling else 0.02  # sqrt(2 * 8) = 4
    for needle in ("'out'", "'down'"):
        assert std(needle, "kernel") == pytest.approx(residual, rel=0.05), needle
    for needle in ("'query'", "'up'"):
        assert std(needle, "kernel") == pytest.approx(0.02, rel=0.05), needle


def test_gpt1_config_uses_dropout_and_plain_init():
    from pretrax.config import load as load_config

    model = load_config("configs/gpt1.yaml").model
    assert model.dropout == 0.1 and not model.residual_init_scaling
    assert ModelSection().dropout == 0.0 and ModelSection().residual_init_scaling  # the defaults: no change


def test_sizes_that_cannot_build_a_model_raise_config_errors():
    with pytest.raises(ConfigError, match="max_seq_len"):
        Decoder(GPT1_TINY, vocab_size=V, max_seq_len=0, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="vocab_size"):
        Decoder(MODERN_TINY, vocab_size=0, max_seq_len=0, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- attention against numpy


def reference_attention(attn, x, segment_ids, bidirectional, positions, theta):
    """Attention written out in float64 numpy: loops over the mask's definition,
    kv heads repeated for grouped-query attention, rotate-half RoPE."""
    w = {name: np.asarray(getattr(attn, name).kernel[...], np.float64) for name in ("query", "key", "value", "out")}
    x = np.asarray(x, np.float64)
    q = np.einsum("btd,dnh->btnh", x, w["query"])
    k = np.einsum("btd,dkh->btkh", x, w["key"])
    v = np.einsum("btd,dkh->btkh", x, w["value"])
    B, T_, N, H = q.shape
    k, v = np.repeat(k, N // k.shape[2], axis=2), np.repeat(v, N // v.shape[2], axis=2)  # (B, T, N, H)
    if positions is not None:
        ang = positions[..., None, None] * theta ** (-np.arange(0, H, 2) / H)  # (B, T, 1, H/2)

        def rot(a):
            a1, a2 = a[..., : H // 2], a[..., H // 2:]
            return np.concatenate([a1 * np.cos(ang) - a2 * np.sin(ang), a2 * np.cos(ang) + a1 * np.sin(ang)], -1)

        q, k = rot(q), rot(k)
    out = np.zeros_like(q)
    for b in range(B):
        for t in range(T_):
            allowed = [segment_ids[b, t] == segment_ids[b, s] and (s <= t or (bidirectional[b, t] and bidirectional[b, s]))
                       for s in range(T_)]
            for n in range(N):
                scores = np.array([q[b, t, n] @ k[b, s, n] / np.sqrt(H) if allowed[s] else -np.inf for s in range(T_)])
                p = np.exp(scores - scores.max())
                out[b, t, n] = (p / p.sum()) @ v[b, :, n]
    return np.einsum("btnh,nhd->btd", out, w["out"])


MASKS = {
    "causal": (np.ones((2, T)), np.zeros((2, T))),
    "prefix": (np.ones((2, T)), np.array([[1] * 5 + [0] * 7, [1] * 2 + [0] * 10])),
    "segments": (np.array([[1] * 4 + [2] * 6 + [0] * 2, [1] * 7 + [2] * 5]), np.zeros((2, T))),
    "segments+prefix": (np.array([[1] * 4 + [2] * 6 + [0] * 2, [1] * 7 + [2] * 5]),
                        np.array([[1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0], [1] * 3 + [0] * 4 + [1] * 2 + [0] * 3])),
}


@pytest.mark.slow
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rope", [True, False])
def test_attention_matches_numpy_reference(mask, n_kv_heads, rope):
    cfg = ModelSection(d_model=16, n_heads=4, n_kv_heads=n_kv_heads, head_dim=6, init_std=0.3)
    attn = Attention(cfg, rngs=nnx.Rngs(1))
    segment_ids, bidirectional = (a.astype(np.int32) for a in MASKS[mask])
    positions = np.concatenate([np.arange(7), np.arange(5)])[None].repeat(2, 0).astype(np.int32)
    x = np.random.default_rng(2).normal(size=(2, T, 16)).astype(np.float32)
    angles = rope_angles(jnp.asarray(positions), 6, cfg.rope_theta) if rope else None
    mask = AttentionMask.self_attention(jnp.asarray(segment_ids), prefix=jnp.asarray(bidirectional))
    got = attn(jnp.asarray(x), mask, angles)
    want = reference_attention(attn, x, segment_ids, bidirectional, positions if rope else None, cfg.rope_theta)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_grouped_query_model_equals_multi_head_model_with_repeated_kv_heads():
    gqa = make(dataclasses.replace(MODERN_TINY, use_bias=True))
    mha = make(dataclasses.replace(MODERN_TINY, use_bias=True, n_kv_heads=0))
    weights = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
    G = MODERN_TINY.n_heads // MODERN_TINY.n_kv_heads
    for block in weights["blocks"].values():
        for name in ("key", "value"):
            block["attn"][name]["kernel"] = jnp.repeat(block["attn"][name]["kernel"], G, axis=1)  # (D, K*G, H)
            block["attn"][name]["bias"] = jnp.repeat(block["attn"][name]["bias"], G, axis=0)  # (K*G, H)
    load(mha, weights)
    toks = tokens_of(0)
    np.testing.assert_allclose(logits(gqa, toks), logits(mha, toks), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- masks through the whole model


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [GPT1_TINY, MODERN_TINY, dataclasses.replace(MODERN_TINY, positions="alibi"),
                                 dataclasses.replace(MODERN_TINY, positions="xpos")],
                         ids=["learned", "rope", "alibi", "xpos"])
def test_packed_document_gives_the_same_logits_as_alone(cfg):
    model = make(cfg)
    doc1, doc2 = tokens_of(3, (1, 5)), tokens_of(4, (1, 7))
    packed = np.concatenate([doc1, doc2], axis=1)  # (1, 12)
    positions = np.concatenate([np.arange(5), np.arange(7)])[None].astype(np.int32)
    segment_ids = np.array([[1] * 5 + [2] * 7], np.int32)
    out = logits(model, packed, positions, segment_ids)
    np.testing.assert_allclose(out[:, :5], logits(model, doc1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], logits(model, doc2), rtol=1e-5, atol=1e-5)

    other = packed.copy()
    other[:, :5] = (other[:, :5] + 1) % V  # a different first document
    again = logits(model, other, positions, segment_ids)
    np.testing.assert_array_equal(again[:, 5:], out[:, 5:])
    assert not np.allclose(again[:, :5], out[:, :5])


@pytest.mark.parametrize("cfg", [GPT1_TINY, MODERN_TINY], ids=["gpt1", "modern"])
def test_causal_mask_hides_the_future(cfg):
    model = make(cfg)
    toks = tokens_of(5)
    changed = toks.copy()
    changed[:, 6] = (changed[:, 6] + 1) % V
    a, b = logits(model, toks), logits(model, changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_prefix_is_bidirectional_and_targets_stay_causal():
    model = make(MODERN_TINY)
    toks = tokens_of(6)
    bidirectional = np.array([[1] * 5 + [0] * 7] * 2, np.int32)  # 5 prefix positions, then targets
    base = logits(model, toks, bidirectional=bidirectional)

    in_prefix = toks.copy()
    in_prefix[:, 3] = (in_prefix[:, 3] + 1) % V
    out = logits(model, in_prefix, bidirectional=bidirectional)
    assert not np.allclose(out[:, :3], base[:, :3])  # earlier prefix positions see a later prefix token

    in_target = toks.copy()
    in_target[:, 8] = (in_target[:, 8] + 1) % V
    out = logits(model, in_target, bidirectional=bidirectional)
    np.testing.assert_array_equal(out[:, :8], base[:, :8])  # neither the prefix nor earlier targets see it


@pytest.mark.slow
def test_padding_rows_are_finite():
    model = make(MODERN_TINY)
    segment_ids = np.array([[0] * T, [1] * 8 + [0] * 4], np.int32)
    assert np.isfinite(logits(model, tokens_of(7), segment_ids=segment_ids)).all()

    graphdef, params = nnx.split(model, nnx.Param)
    grads = jax.grad(lambda p: _forward(graphdef, p, tokens_of(7), None, segment_ids, None).sum())(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- scan and remat


def stacked(blocks):
    """Per-layer weights {0: ..., 1: ...} -> one tree with a leading (L,) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *(blocks[i] for i in sorted(blocks)))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [GPT1_TINY, MODERN_TINY], ids=["gpt1", "modern"])
def test_scanned_layers_equal_a_python_loop_with_the_same_weights(cfg):
    looped = make(cfg)
    scanned = make(dataclasses.replace(cfg, scan_layers=True), seed=1)
    weights = nnx.to_pure_dict(nnx.state(looped, nnx.Param))
    weights["blocks"] = stacked(weights["blocks"])
    load(scanned, weights)
    toks = tokens_of(8)
    np.testing.assert_allclose(logits(scanned, toks), logits(looped, toks), rtol=1e-5, atol=1e-5)

    # and back: unstack the scanned weights into a fresh looped model
    fresh = make(cfg, seed=2)
    weights = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
    weights["blocks"] = {i: jax.tree.map(lambda x: x[i], weights["blocks"]) for i in range(cfg.n_layers)}
    load(fresh, weights)
    np.testing.assert_array_equal(logits(fresh, toks), logits(looped, toks))


@pytest.mark.slow
@pytest.mark.parametrize("scan,remat", [(False, "full"), (True, "dots")])
def test_remat_changes_neither_outputs_nor_gradients(scan, remat):
    toks = tokens_of(9)

    def loss_and_grads(remat):
        model = make(dataclasses.replace(MODERN_TINY, scan_layers=scan, remat=remat))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            out = nnx.merge(graphdef, p)(jnp.asarray(toks))
            return -jnp.mean(jax.nn.log_softmax(out)[..., 0])

        return jax.jit(jax.value_and_grad(loss))(params)

    base_loss, base_grads = loss_and_grads("none")
    got_loss, got_grads = loss_and_grads(remat)
    np.testing.assert_allclose(got_loss, base_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got_grads, base_grads)


# ---------------------------------------------------------------- precision


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [GPT1_TINY, MODERN_TINY], ids=["gpt1", "modern"])
def test_bfloat16_compute_keeps_float32_params_and_logits(cfg):
    fp32 = make(cfg)
    bf16 = make(dataclasses.replace(cfg, dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    toks = tokens_of(10)
    want, got = logits(fp32, toks), logits(bf16, toks)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


# ---------------------------------------------------------------- logical axis names

AXES = set(DEFAULT_RULES) - {"batch"}


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("cfg", [GPT1_TINY, dataclasses.replace(MODERN_TINY, tie_embeddings=False)],
                         ids=["gpt1", "modern-untied"])
def test_every_parameter_has_logical_axis_names(cfg, scan):
    model = make(dataclasses.replace(cfg, scan_layers=scan))
    params = nnx.state(model, nnx.Param)
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(params)))
    for path, p in nnx.to_flat_state(params):
        names = tuple(specs[path].get_value())
        assert len(names) == p.get_value().ndim and set(names) <= AXES, (path, names)
        assert (names[0] == "layers") == (scan and path[0] == "blocks"), (path, names)
    block = ("blocks",) if scan else ("blocks", 0)
    assert tuple(specs[(*block, "attn", "query", "kernel")].get_value())[-3:] == ("embed", "heads", "head_dim")
    assert tuple(specs[(*block, "attn", "key", "kernel")].get_value())[-3:] == ("embed", "kv_heads", "head_dim")
    assert tuple(specs[("embed", "table")].get_value()) == ("vocab", "embed")


@pytest.mark.slow
@pytest.mark.devices(8)
def test_runs_sharded_by_its_logical_names_on_a_mesh():
    # an 8-device (data, fsdp, tensor) mesh; each weight placed by the config's default rules
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    model = make(MODERN_TINY, vocab_size=64)
    graphdef, params = nnx.split(model, nnx.Param)
    rule = lambda name: tuple(DEFAULT_RULES[name]) if isinstance(DEFAULT_RULES[name], list) else DEFAULT_RULES[name]
    named = lambda *axes: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))
    shardings = jax.tree.map(lambda spec: named(*map(rule, spec)), nnx.get_partition_spec(params))
    sharded = jax.device_put(params, shardings)
    assert sharded["embed"]["table"][...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    toks = tokens_of(11, (4, T))
    out = _forward(graphdef, sharded, jax.device_put(toks, named(("data", "fsdp"))), None, None, None)
    np.testing.assert_allclose(np.asarray(out), logits(model, toks), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_remat_saving_attention_outputs_changes_neither_outputs_nor_gradients():
    test_remat_changes_neither_outputs_nor_gradients(True, "attention")


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_remat_saving_attention_outputs_keeps_them(scan, capsys):
    from jax.ad_checkpoint import print_saved_residuals

    def saved(remat):  # what the backward pass keeps from the forward pass
        model = make(dataclasses.replace(MODERN_TINY, scan_layers=scan, remat=remat))
        graphdef, params = nnx.split(model, nnx.Param)
        print_saved_residuals(lambda p: nnx.merge(graphdef, p)(jnp.asarray(tokens_of(9))).sum(), params)
        return capsys.readouterr().out

    # the attention outputs (B, T, N, H), stacked (L, B, T, N, H) under scan
    shape = "f32[" + ",".join(map(str, ((2,) if scan else ()) + (2, T, 4, 8))) + "]"
    assert shape in saved("attention") and shape not in saved("full")

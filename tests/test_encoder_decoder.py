"""The encoder-decoder: published parameter counts, T5 relative buckets, packing,
causality and cross-attention reach, scan/remat equivalence, precision, logical axes."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.config import DEFAULT_RULES, ModelSection, load
from pretrax.errors import ConfigError
from pretrax.models import EncoderDecoder, count_params
from pretrax.models.relative_position import relative_position_bucket

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
V = 53
TINY = ModelSection(
    kind="encoder_decoder", d_model=32, n_layers=2, n_encoder_layers=3, n_heads=4, head_dim=8, d_ff=48,
    positions="relative", relative_buckets=8, relative_max_distance=16, activation="geglu", tie_embeddings=False,
)


def make(cfg=TINY, seed=0):
    return EncoderDecoder(cfg, vocab_size=V, rngs=nnx.Rngs(seed))


@jax.jit
def _forward(graphdef, params, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos):
    return nnx.merge(graphdef, params)(enc, dec, encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg,
                                       encoder_positions=enc_pos, decoder_positions=dec_pos)


def logits(model, enc, dec, enc_seg=None, dec_seg=None, enc_pos=None, dec_pos=None):
    graphdef, params = nnx.split(model, nnx.Param)
    args = [None if a is None else jnp.asarray(a) for a in (enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)]
    return np.asarray(_forward(graphdef, params, *args))


def toks(seed, n):
    return np.random.default_rng(seed).integers(1, V, (1, n)).astype(np.int32)


# ---------------------------------------------------------------- size


@pytest.mark.slow
def test_t5_1_1_base_has_its_published_parameter_count():
    # embeddings 32128*768 = 24,674,304 (shared by both stacks' inputs) + untied output 768*32128 = 24,674,304
    # encoder layer: q,k,v,o 4*768*768 = 2,359,296 + gated MLP 3*768*2048 = 4,718,592 + 2 norms 1,536
    #   = 7,079,424; x12 = 84,953,088
    # decoder layer: + cross-attention 2,359,296 + a third norm 768 = 9,439,488; x12 = 113,273,856
    # final norms 2*768 = 1,536; relative bias tables 2*(32*12) = 768
    # total 49,348,608 + 84,953,088 + 113,273,856 + 1,536 + 768 = 247,577,856
    cfg = load(CONFIGS / "t5_1_1_base.yaml")
    assert cfg.model.kind == "encoder_decoder"
    assert count_params(cfg.model, cfg.model.vocab_size, 0) == 247_577_856


def test_ul2_20b_has_its_published_parameter_count():
    # embeddings 32128*4096 = 131,596,288, untied output the same
    # encoder layer: 4*4096*(16*256) = 67,108,864 + 3*4096*16384 = 201,326,592 + 2*4096 = 268,443,648; x32
    #   = 8,590,196,736
    # decoder layer: + 67,108,864 + 4,096 = 335,556,608; x32 = 10,737,811,456
    # final norms 2*4096 = 8,192; bias tables 2*(32*16) = 1,024
    # total 263,192,576 + 8,590,196,736 + 10,737,811,456 + 8,192 + 1,024 = 19,591,209,984 (the paper's "20B")
    cfg = load(CONFIGS / "ul2_20b.yaml")
    assert cfg.model.scan_layers  # counted through the stacked (L, ...) weights
    assert count_params(cfg.model, cfg.model.vocab_size, 0) == 19_591_209_984


def test_tied_output_drops_the_output_table():
    tied = dataclasses.replace(TINY, tie_embeddings=True)
    assert count_params(TINY, V, 0) - count_params(tied, V, 0) == V * TINY.d_model
    assert make(tied).unembed is None


# ---------------------------------------------------------------- relative buckets


def test_relative_bucket_against_a_hand_table():
    # relative position = key - query. Bidirectional, 32 buckets, max distance 128: 16 per direction,
    # max_exact 8; distance n >= 8 -> 8 + floor(ln(n/8) / ln(16) * 8), capped at 15; keys after the
    # query add 16. e.g. n=12: ln 1.5 / ln 16 * 8 = 1.17 -> 9; n=100: ln 12.5 / ln 16 * 8 = 7.29 -> 15.
    bi = {0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -15: 9, -16: 10, -32: 12, -64: 14, -100: 15, -128: 15,
          -1000: 15, 1: 17, 7: 23, 8: 24, 16: 26, 32: 28, 128: 31, 1000: 31}
    # causal: 32 buckets all for keys at or before the query, max_exact 16; n >= 16 ->
    # 16 + floor(ln(n/16) / ln(8) * 16), capped at 31; later keys (masked anyway) -> 0.
    # e.g. n=20: ln 1.25 / ln 8 * 16 = 1.72 -> 17; n=63: ln 3.94 / ln 8 * 16 = 10.5 -> 26.
    causal = {0: 0, 1: 0, 5: 0, -1: 1, -15: 15, -16: 16, -20: 17, -31: 21, -32: 21, -63: 26, -64: 26,
              -100: 30, -127: 31, -128: 31, -1000: 31}
    for table, bidirectional in ((bi, True), (causal, False)):
        rel = jnp.array(list(table), jnp.int32)
        got = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert dict(zip(table, np.asarray(got).tolist())) == table


# ---------------------------------------------------------------- packing, causality, reach


def packed_pair():
    """Example a (enc 5, dec 4) and b (enc 4, dec 3) packed in one row, plus one pad token each."""
    ea, da, eb, db = toks(1, 5), toks(2, 4), toks(3, 4), toks(4, 3)
    enc = np.concatenate([ea, eb, [[0]]], 1)
    dec = np.concatenate([da, db, [[0]]], 1)
    enc_seg = np.array([[1] * 5 + [2] * 4 + [0]], np.int32)
    dec_seg = np.array([[1] * 4 + [2] * 3 + [0]], np.int32)
    enc_pos = np.array([list(range(5)) + list(range(4)) + [0]], np.int32)
    dec_pos = np.array([list(range(4)) + list(range(3)) + [0]], np.int32)
    return (ea, da, eb, db), (enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)


@pytest.mark.slow
def test_packed_examples_give_the_same_logits_as_each_alone():
    model = make()
    (ea, da, eb, db), packed = packed_pair()
    out = logits(model, *packed)
    assert out.shape == (1, 8, V) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :4], logits(model, ea, da), atol=1e-5)
    np.testing.assert_allclose(out[:, 4:7], logits(model, eb, db), atol=1e-5)
    assert np.isfinite(out).all()  # padding included


def test_decoder_is_causal_and_cross_attention_stays_in_its_example():
    model = make()
    _, (enc, dec, *rest) = packed_pair()
    base = logits(model, enc, dec, *rest)
    for t in range(4):  # change decoder token t of example a
        dec2 = dec.copy()
        dec2[0, t] = dec[0, t] % (V - 1) + 1
        out = logits(model, enc, dec2, *rest)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])  # earlier logits untouched
        assert (np.abs(out[0, t:4] - base[0, t:4]).max(-1) > 1e-6).all()  # own and later ones change
        np.testing.assert_array_equal(out[:, 4:7], base[:, 4:7])  # example b untouched
    for s in range(5):  # every encoder token of example a reaches every decoder logit of a, none of b
        enc2 = enc.copy()
        enc2[0, s] = enc[0, s] % (V - 1) + 1
        out = logits(model, enc2, dec, *rest)
        assert (np.abs(out[0, :4] - base[0, :4]).max(-1) > 1e-6).all()
        np.testing.assert_array_equal(out[:, 4:7], base[:, 4:7])


@pytest.mark.slow
def test_default_positions_and_segments_match_explicit_ones_and_encode_once():
    model = make()
    enc, dec = toks(5, 6), toks(6, 4)
    out = logits(model, enc, dec)
    explicit = logits(model, enc, dec, np.ones((1, 6), np.int32), np.ones((1, 4), np.int32),
                      np.arange(6, dtype=np.int32)[None], np.arange(4, dtype=np.int32)[None])
    np.testing.assert_allclose(out, explicit, atol=1e-6)
    encoded = nnx.jit(lambda m, e: m.encode(e))(model, jnp.asarray(enc))
    assert encoded.shape == (1, 6, TINY.d_model)
    split = nnx.jit(lambda m, x, d: m.decode(x, d))(model, encoded, jnp.asarray(dec))
    np.testing.assert_allclose(np.asarray(split), out, atol=1e-5)


def test_padding_and_unmatched_segments_stay_finite():
    model = make()
    enc = np.zeros((2, 6), np.int32)
    dec = np.zeros((2, 5), np.int32)
    enc_seg = np.array([[1, 1, 0, 0, 0, 0], [0] * 6], np.int32)  # row 1 is all padding
    dec_seg = np.array([[1, 1, 3, 0, 0], [0, 0, 0, 0, 0]], np.int32)  # segment 3 has no encoder segment
    out = logits(model, enc, dec, enc_seg, dec_seg)
    assert np.isfinite(out).all()


# ---------------------------------------------------------------- scan, remat, precision


def stacked_from_list(weights, n_layers):
    """A list model's pure dict -> the scanned model's: per-layer blocks stacked on a new axis 0."""
    out = dict(weights)
    for stack, n in (("encoder", n_layers[0]), ("decoder", n_layers[1])):
        blocks = out[stack]["blocks"]
        out[stack] = dict(out[stack], blocks=jax.tree.map(lambda *xs: np.stack(xs), *[blocks[i] for i in range(n)]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "dots"])  # full remat: tests/test_model.py (decoder), the same wrapper
def test_scan_matches_the_layer_list_with_copied_weights(remat):
    plain = make()
    scanned = make(dataclasses.replace(TINY, scan_layers=True, remat=remat), seed=1)
    state = nnx.state(scanned, nnx.Param)
    nnx.replace_by_pure_dict(state, stacked_from_list(nnx.to_pure_dict(nnx.state(plain, nnx.Param)), (3, 2)))
    nnx.update(scanned, state)
    _, packed = packed_pair()
    np.testing.assert_allclose(logits(scanned, *packed), logits(plain, *packed), atol=1e-5)

    if remat != "none":  # the backward pass is what remat changes
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                     stacked_from_list(plain_grads(), (3, 2)), grads(scanned, packed))


@jax.jit
def _grads(graphdef, params, enc, dec):
    def loss(params):
        return jnp.mean(nnx.merge(graphdef, params)(enc, dec) ** 2)

    return jax.grad(loss)(params)


def grads(model, packed):
    graphdef, params = nnx.split(model, nnx.Param)
    return nnx.to_pure_dict(_grads(graphdef, params, jnp.asarray(packed[0]), jnp.asarray(packed[1])))


@functools.cache
def plain_grads():
    return grads(make(), packed_pair()[1])


@pytest.mark.slow
def test_bf16_compute_with_fp32_params():
    cfg = dataclasses.replace(TINY, dtype="bfloat16", scan_layers=True)
    model = make(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    _, packed = packed_pair()
    out = logits(model, *packed)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    ref = make(dataclasses.replace(cfg, dtype="float32"))
    np.testing.assert_allclose(out, logits(ref, *packed), atol=0.05)


# ---------------------------------------------------------------- axes and config errors


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_known_logical_axes(scan):
    model = make(dataclasses.replace(TINY, scan_layers=scan))
    params = nnx.state(model, nnx.Param)
    specs = nnx.get_partition_spec(params)
    known = set(DEFAULT_RULES) | {"relpos_buckets"}
    leaves = jax.tree.leaves_with_path(params)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(leaves) == len(spec_leaves)
    for (path, x), spec in zip(leaves, spec_leaves):
        name = jax.tree_util.keystr(path)
        assert len(spec) == x.ndim and all(a in known for a in spec), (name, spec)
        assert (spec[0] == "layers") == (scan and "blocks" in name), (name, spec)  # stacked layer weights only
    tables = [(jax.tree_util.keystr(p), x.shape) for p, x in leaves if "relpos" in jax.tree_util.keystr(p)]
    assert len(tables) == 2 and all(shape == (8, 4) for _, shape in tables)  # one per stack


def test_unsupported_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="positions"):
        make(dataclasses.replace(TINY, positions="rope"))
    with pytest.raises(ConfigError, match="pre-norm"):
        make(dataclasses.replace(TINY, norm_position="post"))
    with pytest.raises(ConfigError, match="vocab"):
        EncoderDecoder(TINY, vocab_size=0, rngs=nnx.Rngs(0))

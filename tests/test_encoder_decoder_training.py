"""The encoder-decoder end to end: UL2 examples in encoder-decoder format, pair packing,
the train step (per-denoiser losses, exact resume across meshes), sampling, bad input."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pretrax.config import DataSection, DenoiserSection
from pretrax.data import objectives as O
from pretrax.data.pair_packing import PairPacker
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.tokenizer import ByteTokenizer
from pretrax.errors import ConfigError, DataError

TOK = ByteTokenizer()
MIX = [  # small enough for 48 / 24 token rows
    "data.denoisers=[{kind: prefix, weight: 0.4, mode_token: '[S2S]'}, "
    "{kind: span, mean_span: 3, noise_density: 0.15, weight: 0.3, mode_token: '[NLU]'}, "
    "{kind: span, mean_span: 3, noise_density: 0.5, weight: 0.3, mode_token: '[NLG]'}]",
]
ENC_DEC = [
    "model.kind=encoder_decoder", "model.positions=relative", "model.n_encoder_layers=2",
    "model.relative_buckets=8", "model.relative_max_distance=16", "model.tie_embeddings=false",
    "data.objective=ul2", "data.inputs_len=48", "data.targets_len=24", *MIX,
]


def ul2_data(**kw) -> DataSection:
    dens = (DenoiserSection(kind="prefix", weight=0.4, mode_token="[S2S]"),
            DenoiserSection(mean_span=3, noise_density=0.15, weight=0.3, mode_token="[NLU]"),
            DenoiserSection(mean_span=3, noise_density=0.5, weight=0.3, mode_token="[NLG]"))
    return dataclasses.replace(DataSection(objective="ul2", denoisers=dens, inputs_len=48, targets_len=24), **kw)


def document(n, seed=0):
    ids = np.random.default_rng(seed).integers(3, 250, n).astype(np.int32)  # plain bytes, no specials
    return np.concatenate([[TOK.bos_id], ids, [TOK.eos_id]]).astype(np.int32), ids


# ---------------------------------------------------------------- format


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 400), st.integers(0, 2**31 - 1))
def test_encoder_decoder_examples_rebuild_the_document_and_fit(n, seed):
    obj = O.make_objective(ul2_data(), TOK, encoder_decoder=True)
    tokens, ids = document(n, seed)
    feats = obj(tokens, np.random.default_rng(seed))
    sentinels = {TOK.sentinel_id(k) for k in range(100)}
    modes = {TOK.mode_token_id(m) for m in ("[S2S]", "[NLU]", "[NLG]")}
    rebuilt = []
    for ex in O.example_features(feats):
        enc, dec_in, tgt = ex["encoder_inputs"], ex["inputs"], ex["targets"]
        assert len(enc) <= 48 and len(tgt) <= 24 and np.all(ex["loss_mask"] == 1)
        assert enc[0] in modes and enc[-1] == TOK.eos_id and tgt[-1] == TOK.eos_id
        assert dec_in[0] == TOK.bos_id and list(dec_in[1:]) == list(tgt[:-1])  # targets shifted right
        body, targets = enc[1:-1], tgt[:-1]
        if not np.isin(body, list(sentinels)).any():  # S: prefix then continuation
            rebuilt += list(body) + list(targets)
            continue
        # span: sentinels in the inputs match the targets' in order; fill each from the targets
        spans, cur = {}, None
        for t in targets:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        assert [t for t in body if t in sentinels] == list(spans)
        for t in body:
            rebuilt += spans[t] if t in sentinels else [t]
    # every document token once, in order (a final single leftover token is dropped by design)
    assert rebuilt == list(ids[: len(rebuilt)]) and len(ids) - len(rebuilt) <= 1


@pytest.mark.parametrize("d", O.UL2_DEFAULT)
def test_encoder_decoder_raw_length_is_the_largest_that_fits(d):
    m = 1 if d.mode_token else 0
    raw = O.encoder_decoder_raw_length(d, 512, 256, mode=m)
    enc, dec = O.encoder_decoder_lengths(d, raw, m)
    assert enc <= 512 and dec <= 256
    enc, dec = O.encoder_decoder_lengths(d, raw + 1, m)
    assert enc > 512 or dec > 256


def test_s_split_stays_uniform_and_fits_both_sides():
    obj = O.make_objective(ul2_data(inputs_len=40, targets_len=20), TOK, encoder_decoder=True)
    assert obj.raw_lengths[0] == min(40 - 2, 20 - 1) + 1  # module docstring's rule for S
    rng = np.random.default_rng(0)
    seg = np.arange(3, 3 + obj.raw_lengths[0], dtype=np.int32)
    lengths = {len(obj.example(0, seg, rng)[0]) for _ in range(2000)}
    assert lengths == set(range(1, len(seg)))


def test_lengths_too_short_name_both_minimums():
    data = dataclasses.replace(DataSection(objective="ul2"), inputs_len=300, targets_len=256)
    with pytest.raises(ConfigError, match=r"X, mean_span=64, noise_density=0.15.*inputs_len >= 363 and data.targets_len >= 66"):
        O.make_objective(data, TOK, encoder_decoder=True)
    O.make_objective(dataclasses.replace(data, inputs_len=363), TOK, encoder_decoder=True)  # the minimum is enough


def test_causal_lm_has_no_encoder_decoder_format():
    with pytest.raises(ConfigError, match="causal_lm has no inputs for an encoder"):
        O.make_objective(DataSection(), TOK, encoder_decoder=True)


# ---------------------------------------------------------------- packing


def _docs(n_docs, seed=0):
    obj = O.make_objective(ul2_data(), TOK, encoder_decoder=True)
    rng = np.random.default_rng(seed)
    return [obj(document(int(rng.integers(2, 150)), seed + i)[0], np.random.default_rng(i)) for i in range(n_docs)]


def test_pair_packer_keeps_examples_whole_and_aligned():
    docs = _docs(30)
    feats = O.objective_features("ul2", encoder_decoder=True)
    packer = PairPacker(docs, 48, 24, feats, finite=True)
    expected = [ex for d in docs for ex in O.example_features(d)]
    seen = []
    while packer.doc < len(docs):
        row = packer.next_row()
        enc_seg, dec_seg = row["encoder_segment_ids"], row["segment_ids"]
        segments = sorted(set(dec_seg[dec_seg > 0]))
        assert segments == sorted(set(enc_seg[enc_seg > 0])) == list(range(1, len(segments) + 1))
        for s in segments:
            e, d = enc_seg == s, dec_seg == s
            assert list(row["encoder_positions"][e]) == list(range(e.sum()))
            assert list(row["positions"][d]) == list(range(d.sum()))
            seen.append((list(row["encoder_inputs"][e]), list(row["targets"][d])))
        assert np.all(row["loss_mask"][dec_seg == 0] == 0)
    assert seen == [(list(x["encoder_inputs"]), list(x["targets"])) for x in expected]


def test_pair_packer_state_resumes_exactly():
    docs = _docs(20, seed=3)
    feats = O.objective_features("ul2", encoder_decoder=True)
    a = PairPacker(docs, 48, 24, feats, finite=True)
    for _ in range(5):
        a.next_row()
    b = PairPacker(docs, 48, 24, feats, finite=True)
    b.set_state(*a.get_state())
    for _ in range(5):
        ra, rb = a.next_row(), b.next_row()
        assert all(np.array_equal(ra[k], rb[k]) for k in ra)


def test_pair_packer_refuses_an_example_longer_than_a_row():
    docs = _docs(3)
    with pytest.raises(DataError, match="longer than inputs_len=20"):
        PairPacker(docs, 20, 24, O.objective_features("ul2", encoder_decoder=True), finite=True).next_row()


def test_train_batches_have_both_rows(tiny_cfg):
    cfg = tiny_cfg(*ENC_DEC)
    it = make_train_iterator(cfg)
    batch = next(it)
    it.close()
    assert batch["encoder_inputs"].shape == (8, 48) and batch["inputs"].shape == (8, 24)
    assert "bidirectional" not in batch and set(np.unique(batch["denoiser"])) <= {0, 1, 2}
    for r in range(8):
        assert set(batch["segment_ids"][r]) - {0} == set(batch["encoder_segment_ids"][r]) - {0}


# ---------------------------------------------------------------- training and use


@pytest.mark.slow
@pytest.mark.devices(8)
def test_encoder_decoder_trains_resumes_exactly_on_another_mesh_and_samples(tiny_cfg, tmp_path):
    from pretrax.generate import load_run, sample
    from pretrax.train.loop import train

    one_layer_a_side = [*ENC_DEC, "model.n_encoder_layers=1", "model.n_layers=1"]  # half the compile of two
    straight = train(tiny_cfg(*one_layer_a_side, run_dir=str(tmp_path / "a")), progress=False)
    assert straight.losses[6] < straight.losses[1]
    assert np.isfinite(straight.eval_bits_per_byte)
    import json

    rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    # a logged step reports the denoisers its batch held (8 examples of 3 denoisers: not always all three)
    assert all(any(k.startswith("loss_") for k in r) for r in rows)
    assert {"loss_R", "loss_S", "loss_X"} <= set().union(*rows)

    sharded = one_layer_a_side + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    train(tiny_cfg(*sharded, run_dir=str(tmp_path / "b")), stop_at=3, progress=False)
    resumed = train(tiny_cfg(*sharded, run_dir=str(tmp_path / "b")), progress=False)
    assert resumed.start_step == 3
    for step in range(4, 7):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=2e-5)

    cfg, setup, tok, params, step = load_run(str(tmp_path / "a"))
    assert step == 6
    kw = dict(max_new_tokens=10, temperature=0.0, mode="S")
    text = sample(setup, params, tok, "def f(x):", **kw)  # each call compiles: one call keeps the test short
    assert isinstance(text, str) and len(tok.encode(text)) <= 10
    with pytest.raises(ConfigError, match="does not fit data.inputs_len=48"):
        sample(setup, params, tok, "x" * 60, **kw)


def test_encoder_decoder_refuses_a_causal_lm_eval(tiny_cfg):
    from pretrax.train.loop import train

    with pytest.raises(ConfigError, match="eval_objective=causal_lm needs a decoder-only model"):
        train(tiny_cfg(*ENC_DEC, "train.eval_objective=causal_lm"), progress=False)

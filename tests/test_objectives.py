"""UL2 denoisers: T5 noise masks, span corruption, S, the mixture, decoder-only format, whole-example packing."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrax import config
from pretrax.config import DenoiserSection as D
from pretrax.data import ByteTokenizer, RowPacker, make_train_iterator
from pretrax.data import objectives as O
from pretrax.errors import ConfigError

TOK = ByteTokenizer()
SENT = [TOK.sentinel_id(k) for k in range(100)]
FAST = settings(max_examples=60, deadline=None)


def data(objective="ul2", seq_len=512, denoisers=()):
    return dataclasses.replace(config.DataSection(), objective=objective, seq_len=seq_len, denoisers=tuple(denoisers))


def spans_of(mask):
    """(non-noise runs, noise runs) as lists of lengths."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    runs = np.split(mask, edges)
    return [len(r) for r in runs if not r[0]], [len(r) for r in runs if r[0]]


def merge(inputs, targets):
    """Put each sentinel's span from the targets back into the inputs."""
    sent = set(SENT)
    spans, k = {}, None
    for t in targets[:-1]:
        if t in sent:
            k = t
            spans[k] = []
        else:
            spans[k].append(t)
    out = []
    for t in inputs:
        out.extend(spans.pop(t) if t in sent else [t])
    assert not spans  # each span used exactly once
    return out


# ---------------------------------------------------------------- noise mask


@FAST
@given(st.integers(2, 600), st.floats(0.01, 0.99), st.floats(1, 80), st.integers(0, 2**32 - 1), st.booleans())
def test_noise_mask_counts_and_alternation(length, r, mu, seed, roll):
    mask = O.random_spans_noise_mask(length, r, mu, np.random.default_rng(seed), roll=roll)
    assert mask.shape == (length,) and mask.dtype == bool
    num_noise = min(max(int(np.round(length * r)), 1), length - 1)
    num_spans = min(max(1, int(np.round(num_noise / mu))), length - num_noise)
    assert mask.sum() == num_noise
    clean, noise = spans_of(mask)
    assert len(noise) == num_spans and sum(noise) == num_noise and all(n > 0 for n in noise)
    if not roll:
        assert not mask[0] and mask[-1]  # starts non-noise, ends noise
        assert len(clean) == num_spans
    else:
        assert len(clean) in (num_spans - 1, num_spans, num_spans + 1)


def test_roll_moves_a_single_span_off_the_tail():
    rng = np.random.default_rng(0)
    starts = [int(np.argmax(O.random_spans_noise_mask(100, 0.1, 64, rng, roll=True))) for _ in range(2000)]
    unrolled = O.random_spans_noise_mask(100, 0.1, 64, rng)
    assert int(np.argmax(unrolled)) == 90  # T5: the tail
    assert min(starts) == 0 and max(starts) == 90  # rolled: anywhere in [0, L - n], never wrapped
    assert np.bincount(starts).max() < 2000 / 91 * 2


# ---------------------------------------------------------------- span corruption


@FAST
@given(st.integers(2, 700), st.floats(0.05, 0.95), st.floats(1, 64), st.integers(0, 2**32 - 1), st.booleans())
def test_span_corruption_round_trips_and_sentinels_match(length, r, mu, seed, roll):
    rng = np.random.default_rng(seed)
    seg = rng.integers(3, 259, length).astype(np.int32)
    mask = O.random_spans_noise_mask(length, r, mu, rng, roll=roll)
    _, noise = spans_of(mask)
    if len(noise) > 100:
        with pytest.raises(ValueError):
            O.span_corruption_example(seg, mask, SENT, TOK.eos_id)
        return
    inputs, targets = O.span_corruption_example(seg, mask, SENT, TOK.eos_id)
    k = len(noise)
    assert targets[0] == SENT[0] and targets[-1] == TOK.eos_id
    s_in = [t for t in inputs if t in SENT]
    s_out = [t for t in targets if t in SENT]
    assert s_in == s_out == SENT[:k]  # in order, each once, same in inputs and targets
    assert len(inputs) == length - mask.sum() + k and len(targets) == mask.sum() + k + 1
    assert merge(list(inputs), list(targets)) == list(seg)


def test_prefix_split_is_uniform_in_1_to_l_minus_1():
    obj = O.make_objective(data("prefix_lm", seq_len=64), TOK)
    rng = np.random.default_rng(1)
    seg = np.arange(3, 13, dtype=np.int32)  # L = 10
    splits = []
    for _ in range(4000):
        inputs, targets = obj.example(0, seg, rng)
        assert list(inputs) + list(targets[:-1]) == list(seg) and targets[-1] == TOK.eos_id
        splits.append(len(inputs))
    counts = np.bincount(splits, minlength=10)
    assert counts[0] == 0 and set(np.flatnonzero(counts)) == set(range(1, 10))
    assert np.all(np.abs(counts[1:] - 4000 / 9) < 5 * np.sqrt(4000 / 9))


# ---------------------------------------------------------------- raw lengths and build-time checks


@pytest.mark.parametrize("mu,r,raw,inp,tgt", [(3, .15, 568, 512, 114), (8, .15, 588, 512, 100), (3, .5, 766, 512, 512),
                                              (8, .5, 908, 512, 512), (64, .15, 600, 512, 92), (64, .5, 1006, 512, 512)])
def test_encoder_decoder_raw_lengths_match_t5(mu, r, raw, inp, tgt):
    d = D(mean_span=mu, noise_density=r)
    assert O.encoder_decoder_raw_length(d, 512, 512) == raw
    n, s = O.span_counts(raw, r, mu)
    assert (raw - n + s + 1, n + s + 1) == (inp, tgt)


@pytest.mark.parametrize("seq_len", [427, 512, 700])
def test_decoder_raw_length_is_the_largest_that_fits(seq_len):
    for d in O.UL2_DEFAULT:
        raw = O.decoder_raw_length(d, seq_len)
        assert O.decoder_example_length(d, raw) <= seq_len < O.decoder_example_length(d, raw + 1)


def test_more_spans_than_sentinels_is_a_build_time_error():
    with pytest.raises(ConfigError, match=r"128 noise spans .* data.num_sentinels=100; set data.num_sentinels >= 128"):
        O.make_objective(data(seq_len=1024), TOK)  # X(3, 0.5) makes 128 spans
    O.make_objective(dataclasses.replace(data(seq_len=1024), num_sentinels=128), TOK)  # enough: builds
    with pytest.raises(ConfigError, match="data.num_sentinels=10;"):
        O.make_objective(dataclasses.replace(data(seq_len=512), num_sentinels=10), TOK)


@pytest.mark.parametrize("denoisers,seq_len,match", [
    ([D(noise_density=0.0)], 512, "noise_density"),
    ([D(noise_density=1.0)], 512, "noise_density"),
    ([D(mean_span=0.5)], 512, "mean_span"),
    ([D(weight=0.0), D(weight=0.0)], 512, "weights"),
    ([D(weight=-1.0), D(weight=2.0)], 512, "weights"),
    ([D(mean_span=64, noise_density=0.15, mode_token="[NLG]")], 300, "needs data.seq_len >= 427"),
    ([D(kind="prefix", mode_token="[S2S]")], 2, "seq_len"),
    ([D(mode_token="[FOO]")], 512, "mode_token"),
])
def test_bad_denoisers_are_config_errors(denoisers, seq_len, match):
    with pytest.raises(ConfigError, match=match) as e:
        O.make_objective(data(seq_len=seq_len, denoisers=denoisers), TOK)
    assert "\n" not in str(e.value)


def test_denoisers_with_another_objective_and_bad_iterator_config_fail_early():
    with pytest.raises(ConfigError, match="only used"):
        O.make_objective(data("span_corruption", denoisers=[D()]), TOK)
    cfg = config.from_dict({}).replace(**{"data.objective": "ul2", "data.seq_len": 256})
    with pytest.raises(ConfigError, match="427"):
        make_train_iterator(cfg)


def test_defaults_and_names():
    assert O.denoiser_names(data()) == ["R", "R", "S", "X", "X", "X", "X"]
    w = np.array([d.weight for d in O.UL2_DEFAULT])
    assert np.isclose(w.sum(), 1) and np.isclose(w[2], 0.2)
    assert [d.mode_token for d in O.UL2_DEFAULT] == ["[NLU]"] * 2 + ["[S2S]"] + ["[NLG]"] * 4
    assert O.denoiser_names(data("causal_lm")) == ["causal"]
    assert O.denoiser_names(data("span_corruption")) == ["R"] and O.denoiser_names(data("prefix_lm")) == ["S"]
    ul2r = config.load("configs/ul2r_tiny_decoder.yaml")
    assert O.denoiser_names(ul2r.data) == ["S", "R", "X", "X"]
    assert [d.weight for d in ul2r.data.denoisers] == [0.5, 0.25, 0.125, 0.125]
    O.make_objective(ul2r.data, TOK)
    O.make_objective(config.load("configs/ul2_tiny_decoder.yaml").data, TOK)


# ---------------------------------------------------------------- the mixture in decoder-only format


def check_examples(feats, obj, seq_len):
    examples = O.example_features(feats)
    for ex in examples:
        n = len(ex["inputs"])
        assert 0 < n <= seq_len
        np.testing.assert_array_equal(ex["targets"][:-1], ex["inputs"][1:])
        i = int(ex["denoiser"][0])
        assert (ex["denoiser"] == i).all()
        seq = np.concatenate([ex["inputs"], ex["targets"][-1:]])
        prefix = int(ex["bidirectional"].sum())
        assert (ex["bidirectional"][:prefix] == 1).all()  # a prefix: mode + inputs, bidirectional
        np.testing.assert_array_equal(ex["loss_mask"], (np.arange(n) >= prefix - 1).astype(np.float32))
        assert seq[-1] == TOK.eos_id
        mode = obj._modes[i]
        assert list(seq[: len(mode)]) == mode
        d = obj.denoisers[i]
        inputs, targets = seq[len(mode) : prefix], seq[prefix:]
        if d.kind == "span":
            assert targets[0] == SENT[0]
        yield i, inputs, targets, d


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 2**32 - 1), st.sampled_from([427, 512, 600]))
def test_documents_become_fitting_examples_that_merge_back(n, seed, seq_len):
    obj = O.make_objective(data(seq_len=seq_len), TOK)
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 259, n).astype(np.int32)
    feats = obj(np.concatenate([[TOK.bos_id], ids, [TOK.eos_id]]).astype(np.int32), rng)
    assert len({len(v) for v in feats.values()}) == 1
    rebuilt = []
    for i, inputs, targets, d in check_examples(feats, obj, seq_len):
        raw = merge(list(inputs), list(targets)) if d.kind == "span" else list(inputs) + list(targets[:-1])
        assert len(raw) <= obj.raw_lengths[i]
        if d.kind == "span":  # the count rules hold on the segment actually used
            _, s = O.span_counts(len(raw), d.noise_density, d.mean_span)
            assert sum(t in SENT for t in inputs) == s
        rebuilt += raw
    assert rebuilt == list(ids[: len(rebuilt)]) and len(ids) - len(rebuilt) <= 1  # at most a 1-token tail dropped


def test_denoiser_shares_match_weights():
    dens = [D(kind="prefix", weight=0.5, mode_token="[S2S]"), D(weight=0.25), D(mean_span=32, weight=0.25,
                                                                              mode_token="[NLG]")]
    obj = O.make_objective(data(seq_len=256, denoisers=dens), TOK)
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    tokens = np.concatenate([[TOK.bos_id], np.full(50, 10), [TOK.eos_id]]).astype(np.int32)  # one example each
    N = 6000
    for _ in range(N):
        feats = obj(tokens, rng)
        counts[feats["denoiser"][0]] += 1
    p = np.array([0.5, 0.25, 0.25])
    assert np.all(np.abs(counts / N - p) < 5 * np.sqrt(p * (1 - p) / N))


# ---------------------------------------------------------------- packing and the iterator


def test_packer_never_splits_an_example():
    def doc(lengths):
        feats = [O.decoder_only_example([], np.arange(3, 3 + L // 2, dtype=np.int32),
                                        np.arange(3, 4 + L - L // 2, dtype=np.int32), j % 3)
                 for j, L in enumerate(lengths)]
        return {k: np.concatenate([f[k] for f in feats]) for k in feats[0]}

    rng = np.random.default_rng(0)
    docs = [doc(rng.integers(2, 17, rng.integers(1, 4))) if rng.random() > 0.1 else
            {k: np.zeros(0, np.float32 if k == "loss_mask" else np.int32) for k in [*O.DENOISER_FEATURES,
                                                                                     O.EXAMPLE_STARTS]}
            for _ in range(200)]
    lengths = [L for d in docs for L in np.diff(np.append(np.flatnonzero(d.get(O.EXAMPLE_STARTS, [])),
                                                          len(d["inputs"])))]
    packer = RowPacker(docs, 16, O.DENOISER_FEATURES, finite=True, whole_examples=True)
    seen = []
    states = []
    while packer.doc < len(docs):
        states.append(packer.get_state())
        row = packer.next_row()
        assert O.EXAMPLE_STARTS not in row
        seg, pos = row["segment_ids"], row["positions"]
        for s in range(1, seg.max() + 1):
            at = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[at], np.arange(len(at)))  # positions restart per example
            seen.append(len(at))
        assert not ((seg[:-1] == 0) & (seg[1:] > 0)).any()
        for k in row:
            assert (row[k][seg == 0] == 0).all()
    assert seen == lengths  # every example whole, in order, each its own segment
    # resume anywhere from the two-integer state
    d, o = states[len(states) // 2]
    fresh = RowPacker(docs, 16, O.DENOISER_FEATURES, finite=True, whole_examples=True)
    fresh.set_state(d, o)
    packer.set_state(d, o)
    assert o == 0 or docs[d][O.EXAMPLE_STARTS][o] == 1  # the state's offset sits at an example boundary
    x, y = packer.next_row(), fresh.next_row()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def ul2_cfg(**kw):
    base = {"data.objective": "ul2", "data.seq_len": 512, "train.batch_size": 4, "run.seed": 0}
    return config.from_dict({}).replace(**{**base, **kw})


@pytest.mark.parametrize("concat", [True, False])  # documents concatenated then cut (default), or one by one
def test_ul2_batches_are_deterministic_and_resume_exactly(concat):
    cfg = ul2_cfg(**{"data.concat_documents": concat})
    a = make_train_iterator(cfg)
    first = [next(a) for _ in range(6)]
    state = a.get_state()
    rest = [next(a) for _ in range(4)]
    again = make_train_iterator(cfg)
    for x, y in zip(first, [next(again) for _ in range(6)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    resumed = make_train_iterator(cfg)
    resumed.set_state(state)
    for x, y in zip(rest, [next(resumed) for _ in range(4)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    other = next(make_train_iterator(ul2_cfg(**{"run.seed": 1, "data.concat_documents": concat})))
    assert not np.array_equal(other["inputs"], first[0]["inputs"])


def test_ul2_batch_invariants():
    cfg = ul2_cfg()
    names = O.denoiser_names(cfg.data)
    seen = set()
    for b, _ in zip(make_train_iterator(cfg), range(8)):
        assert set(b) == {"inputs", "targets", "loss_mask", "bidirectional", "denoiser", "segment_ids", "positions"}
        seg, pos = b["segment_ids"], b["positions"]
        for row in range(seg.shape[0]):
            for s in range(1, seg[row].max() + 1):
                at = np.flatnonzero(seg[row] == s)
                np.testing.assert_array_equal(pos[row, at], np.arange(len(at)))
                bid, lm = b["bidirectional"][row, at], b["loss_mask"][row, at]
                p = int(bid.sum())
                assert p > 0 and (bid[:p] == 1).all() and (bid[p:] == 0).all()
                assert (lm[: p - 1] == 0).all() and (lm[p - 1 :] == 1).all()
                seen.add(names[int(b["denoiser"][row, at[0]])])
        assert (b["loss_mask"][seg == 0] == 0).all()
    assert seen == {"R", "S", "X"}

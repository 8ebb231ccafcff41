"""Data core: tokenizer, corpus, packing and the grain pipeline (determinism, resume, host shards)."""

import json
import os

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrax import config
from pretrax.data import corpus as corpus_mod
from pretrax.data import pipeline
from pretrax.data import sources as sources_mod
from pretrax.data import (
    FEATURES,
    ByteTokenizer,
    RowPacker,
    eval_batches,
    load_tokenizer,
    make_train_iterator,
    merge_states,
    split,
    stdlib_corpus,
)
from pretrax.errors import ConfigError, DataError

TOK = ByteTokenizer()
KEYS = {"inputs", "targets", "segment_ids", "positions", "loss_mask", "bidirectional"}


def small_cfg(**overrides):
    base = {"train.batch_size": 4, "data.seq_len": 64, "run.seed": 0}
    return config.from_dict({}).replace(**{**base, **overrides})


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def check_packed_invariants(batch, seq_len):
    """What the trainer relies on, for any packed batch."""
    seg, pos = batch["segment_ids"], batch["positions"]
    same = seg[:, 1:] == seg[:, :-1]
    # positions count up inside a segment and restart at 0 where a new segment starts
    np.testing.assert_array_equal(pos[:, 1:][same & (seg[:, 1:] > 0)], pos[:, :-1][same & (seg[:, 1:] > 0)] + 1)
    np.testing.assert_array_equal(pos[:, 1:][~same & (seg[:, 1:] > 0)], 0)
    assert (pos[:, 0][seg[:, 0] > 0] == 0).all()
    # segment ids are 1, 2, 3... in order; padding (0) only at the end of a row
    assert (np.diff(seg, axis=1)[seg[:, 1:] > 0] >= 0).all()
    assert ((seg[:, 0] == 1) | (seg[:, 0] == 0)).all()
    assert not ((seg[:, :-1] == 0) & (seg[:, 1:] > 0)).any()
    # targets are the inputs shifted by one within a segment, so no target crosses a document
    np.testing.assert_array_equal(batch["targets"][:, :-1][same], batch["inputs"][:, 1:][same])
    # loss only where there is a real token; padding is all zeros
    np.testing.assert_array_equal(batch["loss_mask"], (seg > 0).astype(np.float32))
    for k in KEYS:
        assert (batch[k][seg == 0] == 0).all(), k
    assert batch["inputs"].shape[1] == seq_len


# ---------------------------------------------------------------- tokenizer


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_any_unicode(text):
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert int(TOK.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert all(TOK.byte_offset <= i < TOK.byte_offset + 256 for i in ids)


def test_byte_tokenizer_id_layout_and_specials():
    t = load_tokenizer("bytes")
    assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)
    assert t.vocab_size == 3 + 256 + 3 + 100
    assert t.sentinel_id(0) == t.vocab_size - 1 and t.sentinel_id(99) == t.vocab_size - 100
    modes = [t.mode_token_id(m) for m in ("[NLU]", "[NLG]", "[S2S]")]
    assert modes == [259, 260, 261]
    specials = [t.pad_id, t.eos_id, t.bos_id, *modes, t.sentinel_id(0), t.sentinel_id(99)]
    assert t.token_bytes.shape == (t.vocab_size,) and t.token_bytes.dtype == np.int32
    assert (t.token_bytes[specials] == 0).all() and t.token_bytes.sum() == 256
    # specials (and ids past the vocab, as a padded model vocab may sample) are skipped when decoding
    assert t.decode([t.bos_id, *t.encode("hé"), t.eos_id, t.sentinel_id(3), t.vocab_size + 5, t.pad_id]) == "hé"
    assert t.decode([0xFF + 3, *t.encode("ok")]) == "\ufffdok"  # invalid UTF-8 replaced, not raised
    with pytest.raises(ConfigError, match="bytes"):
        load_tokenizer("sentencepiece")
    with pytest.raises(ValueError):
        t.sentinel_id(100)


# ---------------------------------------------------------------- corpus


def test_stdlib_corpus_lists_sources_and_topics_lazily():
    c = stdlib_corpus()
    assert len(c) > 500
    files = [n for n in c.names if not n.startswith(corpus_mod.TOPICS_PREFIX)]
    assert files == sorted(files) and "json/decoder.py" in files
    assert not any("site-packages" in n for n in c.names)
    assert any(n.startswith(corpus_mod.TOPICS_PREFIX) for n in c.names)
    text = c[c.names.index("json/decoder.py")]
    assert "class JSONDecoder" in text


def test_heldout_split_is_disjoint_stable_and_sized():
    c = stdlib_corpus()
    train, heldout = split(c, 2.0)
    assert set(train.names).isdisjoint(heldout.names)
    assert sorted(train.names + heldout.names) == sorted(c.names)
    assert 0.005 * len(c) < len(heldout) < 0.05 * len(c)
    assert split(c, 2.0)[1].names == heldout.names
    assert len(split(c, 0.0)[1]) == 0


def test_corpus_skips_unreadable_files_and_rejects_an_empty_one(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "_topics", lambda: {})
    monkeypatch.setattr(corpus_mod.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    with pytest.raises(DataError, match="empty"):
        corpus_mod.stdlib_corpus.__wrapped__()
    for name in ("a.py", "b.py", "site-packages/x.py", "empty.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("" if name == "empty.py" else f"# {name}\n")
    c = corpus_mod.stdlib_corpus.__wrapped__()
    assert c.names == ("a.py", "b.py")
    os.remove(tmp_path / "b.py")  # gone after listing: read as empty, not a crash
    assert c[0] == "# a.py\n" and c[1] == ""


# ---------------------------------------------------------------- packing


def _docs(lengths, start=0):
    """Synthetic documents: doc i is a run of distinct token values so pieces are traceable."""
    out, value = [], start
    for n in lengths:
        toks = np.arange(value, value + n + 1, dtype=np.int32)
        out.append(pipeline.causal_lm(toks, None))
        value += n + 1
    return out


def test_packer_concatenates_splits_and_pads_at_the_end():
    lengths = [5, 0, 12, 3, 30, 1, 7]
    docs = grain.MapDataset.source(_docs(lengths))
    packer = RowPacker(docs, 8, FEATURES, finite=True)
    rows = [packer.next_row() for _ in range(9)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    check_packed_invariants(batch, 8)
    # nothing lost, nothing duplicated: the real tokens, in order, are the documents concatenated
    real = batch["segment_ids"] > 0
    want = np.concatenate([d["inputs"] for d in _docs(lengths)])
    np.testing.assert_array_equal(batch["inputs"][real], want)
    np.testing.assert_array_equal(batch["targets"][real], np.concatenate([d["targets"] for d in _docs(lengths)]))
    assert real.sum() == sum(lengths)
    # the first row holds doc 0 (5 tokens) then the first 3 of doc 2; the empty doc 1 is skipped
    np.testing.assert_array_equal(batch["segment_ids"][0], [1] * 5 + [2] * 3)
    np.testing.assert_array_equal(batch["positions"][0], [0, 1, 2, 3, 4, 0, 1, 2])
    # after the stream ends rows are all padding
    assert not real[-1].any() and rows[-1]["loss_mask"].sum() == 0


def test_packer_state_is_two_integers_and_restores_exactly_anywhere():
    docs = grain.MapDataset.source(_docs([5, 0, 12, 3, 30, 1, 7, 19, 2])).repeat()
    packer = RowPacker(docs, 8, FEATURES, finite=False)
    states, rows = [], []
    for _ in range(20):
        states.append(packer.get_state())
        rows.append(packer.next_row())
    for i in range(0, 20, 3):
        fresh = RowPacker(docs, 8, FEATURES, finite=False)
        fresh.set_state(*json.loads(json.dumps(states[i])))
        for want in rows[i:]:
            got = fresh.next_row()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])


def test_packer_rejects_a_stream_of_only_empty_documents(monkeypatch):
    monkeypatch.setattr("pretrax.data.packing.MAX_EMPTY_RUN", 50)
    docs = grain.MapDataset.source(_docs([0, 0, 0])).repeat()
    with pytest.raises(DataError, match="empty"):
        RowPacker(docs, 8, FEATURES, finite=False).next_row()


# ---------------------------------------------------------------- pipeline


def test_train_batches_have_the_promised_shapes_and_invariants():
    cfg = small_cfg()
    for batch in take(make_train_iterator(cfg), 20):
        assert set(batch) == KEYS
        for k, v in batch.items():
            assert v.shape == (4, 64), k
            assert v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
        check_packed_invariants(batch, 64)
        assert (batch["bidirectional"] == 0).all()
        assert (batch["segment_ids"] > 0).all()  # an endless stream never pads
        assert batch["inputs"].max() < TOK.vocab_size and batch["targets"].max() < TOK.vocab_size


def test_rows_are_the_corpus_documents_tokenized_with_bos_and_eos_in_order():
    cfg = small_cfg(**{"train.batch_size": 1, "data.shuffle": False, "data.seq_len": 256})
    rows = take(make_train_iterator(cfg), 60)
    inputs = np.concatenate([b["inputs"][0] for b in rows])
    targets = np.concatenate([b["targets"][0] for b in rows])
    train, _ = split(stdlib_corpus(), cfg.data.heldout_percent)
    stream_inputs, stream_targets = [], []
    for text in train:  # unshuffled, one row: the documents in corpus order
        toks = [TOK.bos_id] + TOK.encode(text) + [TOK.eos_id]
        stream_inputs += toks[:-1]  # inputs drop each document's eos, targets its bos
        stream_targets += toks[1:]
        if len(stream_inputs) > len(inputs):
            break
    np.testing.assert_array_equal(inputs, stream_inputs[: len(inputs)])
    np.testing.assert_array_equal(targets, stream_targets[: len(targets)])
    assert (targets == TOK.eos_id).sum() >= 1  # at least one document ended inside these rows


def test_same_seed_same_batches_other_seed_other_batches():
    a = take(make_train_iterator(small_cfg()), 5)
    assert_same_batches(a, take(make_train_iterator(small_cfg()), 5))
    b = take(make_train_iterator(small_cfg(**{"run.seed": 1})), 5)
    assert not np.array_equal(a[0]["inputs"], b[0]["inputs"])


def test_state_round_trip_gives_exactly_the_next_batches():
    cfg = small_cfg()
    it = make_train_iterator(cfg)
    take(it, 7)
    state = it.get_state()
    assert json.loads(json.dumps(state)) == state
    assert all(isinstance(v, int) for v in state["doc"] + state["offset"])
    assert any(o > 0 for o in state["offset"])  # resuming in the middle of documents
    want = take(it, 6)
    fresh = make_train_iterator(cfg)
    fresh.set_state(json.loads(json.dumps(state)))
    assert_same_batches(take(fresh, 6), want)


def test_resume_continues_across_epochs():
    # a corpus of three short documents wraps many epochs within a few batches, each reshuffled
    c = corpus_mod.Corpus(["a", "b", "c"], lambda n: {"a": "alpha " * 9, "b": "beta " * 5, "c": "gamma " * 13}[n])
    docs = pipeline.document_dataset(c, TOK, "causal_lm", seed=3, shuffle=True, repeat=True)
    orders = [[docs[e * 3 + i]["inputs"][1] for i in range(3)] for e in range(6)]
    assert len({tuple(o) for o in orders}) > 1  # epochs are shuffled differently
    packer = RowPacker(docs[0::2], 16, FEATURES, finite=False)
    rows = [packer.next_row() for _ in range(40)]
    state = packer.get_state()
    assert state[0] > 6  # well past the first epoch
    want = [packer.next_row() for _ in range(5)]
    fresh = RowPacker(docs[0::2], 16, FEATURES, finite=False)
    fresh.set_state(*state)
    for w in want:
        np.testing.assert_array_equal(fresh.next_row()["inputs"], w["inputs"])
    check_packed_invariants({k: np.stack([r[k] for r in rows]) for k in rows[0]}, 16)


def test_state_from_another_run_is_refused():
    it = make_train_iterator(small_cfg())
    state = it.get_state()
    with pytest.raises(DataError, match="seed"):
        make_train_iterator(small_cfg(**{"run.seed": 5})).set_state(state)
    with pytest.raises(DataError, match="global_batch"):
        make_train_iterator(small_cfg(**{"train.batch_size": 8})).set_state(state)


class _Spy:
    """Records which document names a pipeline reads."""

    def __init__(self, monkeypatch):
        self.read = []
        real = corpus_mod.stdlib_corpus()

        def load():
            return corpus_mod.Corpus(real.names, lambda name: (self.read.append(name), real._read(name))[1])

        monkeypatch.setattr(sources_mod, "stdlib_corpus", load)


def test_hosts_read_disjoint_documents_and_stack_to_the_one_host_batch(monkeypatch):
    spy = _Spy(monkeypatch)
    cfg = small_cfg()
    one = take(make_train_iterator(cfg), 6)
    read_by_one = set(spy.read)
    hosts = []
    reads = []
    for p in range(2):
        spy.read.clear()
        hosts.append(take(make_train_iterator(cfg, process_index=p, process_count=2), 6))
        reads.append(set(spy.read))
    for b, h0, h1 in zip(one, *hosts):
        assert h0["inputs"].shape == (2, 64)
        for k in KEYS:
            np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), b[k], err_msg=k)
    assert reads[0] and reads[1] and reads[0].isdisjoint(reads[1])  # first epoch: each document read by one host
    assert reads[0] | reads[1] == read_by_one
    with pytest.raises(ConfigError, match="divisible"):
        make_train_iterator(cfg, process_index=0, process_count=3)


def test_host_states_merge_into_a_state_any_host_count_resumes():
    cfg = small_cfg()
    hosts = [make_train_iterator(cfg, process_index=p, process_count=2) for p in range(2)]
    for h in hosts:
        take(h, 5)
    merged = merge_states([json.loads(json.dumps(h.get_state())) for h in reversed(hosts)])
    want = [np.concatenate([a["inputs"], b["inputs"]]) for a, b in zip(take(hosts[0], 4), take(hosts[1], 4))]
    one = make_train_iterator(cfg)
    one.set_state(merged)  # 2 hosts -> 1 host
    for w, got in zip(want, take(one, 4)):
        np.testing.assert_array_equal(got["inputs"], w)
    four = make_train_iterator(cfg, process_index=3, process_count=4)
    four.set_state(merged)  # 2 hosts -> 4 hosts: host 3 owns the last row
    np.testing.assert_array_equal(next(four)["inputs"][0], want[0][3])
    with pytest.raises(DataError, match="merge"):  # host 0's own state lacks host 1's rows
        make_train_iterator(cfg, process_index=1, process_count=2).set_state(hosts[0].get_state())


def test_eval_batches_are_heldout_only_and_identical_every_call(monkeypatch):
    spy = _Spy(monkeypatch)
    cfg = small_cfg()
    a = eval_batches(cfg, 3, 5)
    _, heldout = split(stdlib_corpus(), cfg.data.heldout_percent)
    assert spy.read and set(spy.read) <= set(heldout.names)
    spy.read.clear()
    take(make_train_iterator(cfg), 20)
    assert spy.read and set(spy.read).isdisjoint(heldout.names)
    assert len(a) == 3 and a[0]["inputs"].shape == (5, 64)
    for batch in a:
        check_packed_invariants(batch, 64)
    assert_same_batches(a, eval_batches(cfg, 3, 5))
    with pytest.raises(DataError, match="heldout_percent"):
        eval_batches(small_cfg(**{"data.heldout_percent": 0.0}), 1, 2)


def test_eval_pads_rather_than_repeats_when_heldout_runs_out():
    cfg = small_cfg(**{"data.seq_len": 1024, "data.heldout_percent": 0.5})
    _, heldout = split(stdlib_corpus(), 0.5)
    lengths = [len(TOK.encode(text)) + 1 for text in heldout]  # inputs: bos + each document's tokens
    assert lengths
    rows = len(heldout) + 1  # one row per document (and one row with none): every stream runs out
    batches = eval_batches(cfg, -(-max(lengths) // 1024) + 1, rows)
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert real == sum(lengths)  # every held-out token exactly once
    assert batches[-1]["loss_mask"].sum() == 0

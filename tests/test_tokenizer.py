"""SentencePiece tokenizers: training, the fixed id layout, exact round trips, external models, loading."""

import os
import pickle

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrax.data.corpus import stdlib_corpus
from pretrax.data.spm_train import MIN_VOCAB_SIZE, train_sentencepiece
from pretrax.data.tokenizer import (
    MODE_TOKENS,
    ByteTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
)
from pretrax.errors import ConfigError, DataError

VOCAB = 640
TRICKY = [
    "",
    " ",
    "  leading and trailing  ",
    "def f(x):\n\treturn  x + 12345\r\n\n",
    "\x00\x01\x7f\x85\u2028\u00a0\u3000",
    "\u2581 literal \u2581\u2581 marker\u2581",
    "[NLU] [NLG][S2S] <extra_id_0> <pad></s><s><unk> <0x41>",
    "e\u0301 \U0001F600\U0001F469\u200d\U0001F4BB \u4e2d\u6587 \ufffd \U0010FFFF",
]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """Two text files made of real stdlib documents (a small, fast training set)."""
    d = tmp_path_factory.mktemp("text")
    docs = [stdlib_corpus()[i] for i in range(0, 240, 3)]
    (d / "a.txt").write_text("".join(docs[:40]), encoding="utf-8")
    (d / "b.txt").write_text("".join(docs[40:]), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def models(text_dir, tmp_path_factory):
    """model type -> path of a trained VOCAB-id model."""
    out = tmp_path_factory.mktemp("models")
    return {
        mt: train_sentencepiece([str(text_dir / "*.txt")], vocab_size=VOCAB, model_type=mt, out=str(out / f"{mt}.model"))
        for mt in ("bpe", "unigram")
    }


@pytest.fixture(scope="module")
def toks(models):
    return {mt: SentencePieceTokenizer.from_file(path) for mt, path in models.items()}


@pytest.fixture(scope="module")
def external(text_dir, tmp_path_factory):
    """A plain SentencePiece model, no pretrax symbols, T5's special layout (pad 0, eos 1, unk 2, no bos)."""
    path = tmp_path_factory.mktemp("ext") / "t5like.model"
    spm.SentencePieceTrainer.train(
        input=str(text_dir / "a.txt"), model_prefix=str(path)[: -len(".model")], vocab_size=300,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return str(path)


# ---------------------------------------------------------------- training and the id layout


@pytest.mark.parametrize("mt", ["bpe", "unigram"])
def test_trained_model_has_the_fixed_id_layout(toks, models, mt):
    t = toks[mt]
    sp = t.sp
    assert t.vocab_size == VOCAB and sp.get_piece_size() == VOCAB - 100
    assert (t.pad_id, t.eos_id, t.bos_id, t.unk_id) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert [t.mode_token_id(m) for m in MODE_TOKENS] == [4, 5, 6]
    assert [sp.id_to_piece(i) for i in (4, 5, 6)] == list(MODE_TOKENS)
    assert all(sp.is_byte(i) for i in range(7, 263)) and sp.id_to_piece(7) == "<0x00>"
    sentinels = [t.sentinel_id(k) for k in range(100)]
    assert sentinels == [VOCAB - 1 - k for k in range(100)]
    assert min(sentinels) == sp.get_piece_size()  # above every real piece: no collision
    assert [t.decode([s]) for s in sentinels[:2]] == ["<extra_id_0>", "<extra_id_1>"]
    with pytest.raises(ValueError):
        t.sentinel_id(100)
    # learned pieces exist and are used: real text takes fewer tokens than bytes
    text = "".join(stdlib_corpus()[i] for i in range(0, 60, 3))
    assert len(t.encode(text)) < 0.6 * len(text.encode("utf-8"))
    # token_bytes: specials and sentinels 0, byte pieces 1, mode tokens their text
    tb = t.token_bytes
    assert tb.shape == (VOCAB,) and tb.dtype == np.int32
    assert (tb[[0, 1, 2, 3, *sentinels]] == 0).all() and (tb[7:263] == 1).all() and (tb[4:7] == 5).all()
    # the .vocab lists every id in order, sentinels last
    vocab = open(models[mt][: -len(".model")] + ".vocab", encoding="utf-8").read().splitlines()
    assert len(vocab) == VOCAB and vocab[0].startswith("<pad>\t") and vocab[-1].startswith("<extra_id_0>\t")


def test_decode_skips_controls_and_ids_past_the_vocab(toks):
    t = toks["bpe"]
    ids = [t.bos_id, *t.encode("hé"), t.sentinel_id(3), *t.encode(" x"), t.eos_id, t.vocab_size + 5, t.pad_id]
    assert t.decode(ids) == "hé<extra_id_3> x"
    assert t.decode(np.asarray([t.encode("ok")])) == "ok"  # any array shape


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_round_trip(toks, text):
    for t in (*toks.values(), ByteTokenizer()):
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert int(t.token_bytes[ids].sum()) == len(text.encode("utf-8"))
        assert all(0 <= i < t.vocab_size - 100 for i in ids)  # never a sentinel


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_round_trip_and_token_bytes_for_any_unicode(toks, text):
    n_bytes = len(text.encode("utf-8"))
    for t in (toks["bpe"], toks["unigram"], ByteTokenizer()):
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert int(t.token_bytes[ids].sum()) == n_bytes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["def", " ", "  ", "\n", "\t", "self", "é", "\u2581", "1", "[NLU]", "😀"]), max_size=30))
def test_round_trip_for_whitespace_heavy_text(toks, parts):
    text = "".join(parts)
    for t in toks.values():
        assert t.decode(t.encode(text)) == text


def test_training_is_deterministic(text_dir, models, tmp_path):
    again = train_sentencepiece([str(text_dir / "*.txt")], vocab_size=VOCAB, model_type="bpe",
                                out=str(tmp_path / "again.model"))
    assert open(again, "rb").read() == open(models["bpe"], "rb").read()


def test_pickles_for_worker_processes(toks):
    t = pickle.loads(pickle.dumps(toks["unigram"]))
    assert t.encode("import os\n") == toks["unigram"].encode("import os\n") and t.vocab_size == VOCAB


# ---------------------------------------------------------------- loading


def test_load_tokenizer_paths(toks, models, tmp_path):
    for mt, path in models.items():
        t = load_tokenizer(path)
        assert isinstance(t, SentencePieceTokenizer) and t.vocab_size == VOCAB
        text = stdlib_corpus()[7][:2000]
        assert t.encode(text) == toks[mt].encode(text)
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)

    missing = str(tmp_path / "nope.model")
    with pytest.raises(ConfigError, match="nope.model") as e:
        load_tokenizer(missing)
    assert "\n" not in str(e.value) and "bytes" in str(e.value)

    for name, data in (("text.model", b"hello\nworld\n"), ("empty.model", b""), ("random.bin", os.urandom(300))):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(ConfigError, match=name) as e:
            load_tokenizer(str(bad))
        assert "\n" not in str(e.value) and "SentencePiece" in str(e.value)
    with pytest.raises(ConfigError, match="bytes"):
        load_tokenizer(str(tmp_path))  # a directory


def test_external_model_gets_sentinels_on_top(external):
    t = load_tokenizer(external)
    n = t.sp.get_piece_size()
    assert n == 300 and t.vocab_size == n + 100
    assert (t.pad_id, t.eos_id) == (0, 1) and t.bos_id == t.pad_id  # no bos: pad stands in (T5's decoder start)
    assert t.sentinel_id(0) == n + 99 and t.sentinel_id(99) == n
    assert t.decode([*t.encode("the"), t.sentinel_id(0)]).endswith("<extra_id_0>")
    assert t.token_bytes.shape == (t.vocab_size,) and t.token_bytes[n:].sum() == 0
    for m in MODE_TOKENS:
        with pytest.raises(ConfigError, match="no piece") as e:
            t.mode_token_id(m)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_external_model_without_pad_or_eos(text_dir, tmp_path):
    prefix = str(tmp_path / "default")  # SentencePiece's defaults: unk 0, bos 1, eos 2, no pad
    spm.SentencePieceTrainer.train(input=str(text_dir / "a.txt"), model_prefix=prefix, vocab_size=300, minloglevel=2)
    t = load_tokenizer(prefix + ".model")
    assert (t.pad_id, t.bos_id, t.eos_id) == (0, 1, 2)  # pad falls back to unk
    prefix = str(tmp_path / "noeos")
    spm.SentencePieceTrainer.train(input=str(text_dir / "a.txt"), model_prefix=prefix, vocab_size=300,
                                   eos_id=-1, minloglevel=2)
    with pytest.raises(ConfigError, match="no eos"):
        load_tokenizer(prefix + ".model")


# ---------------------------------------------------------------- refusals


def test_train_refuses_bad_inputs_and_options(text_dir, tmp_path):
    out = str(tmp_path / "m.model")
    with pytest.raises(DataError, match="nothing-here"):
        train_sentencepiece([str(text_dir / "*.txt"), str(tmp_path / "nothing-here/*.txt")], vocab_size=VOCAB,
                            model_type="bpe", out=out)
    with pytest.raises(ConfigError, match=str(MIN_VOCAB_SIZE)):
        train_sentencepiece([str(text_dir / "a.txt")], vocab_size=MIN_VOCAB_SIZE - 1, model_type="bpe", out=out)
    with pytest.raises(ConfigError, match="model-type"):
        train_sentencepiece([str(text_dir / "a.txt")], vocab_size=VOCAB, model_type="wordpiece", out=out)
    with pytest.raises(ConfigError, match=r"\.model"):
        train_sentencepiece([str(text_dir / "a.txt")], vocab_size=VOCAB, model_type="bpe", out=str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mt", ["bpe", "unigram"])
def test_failed_training_leaves_existing_model_untouched(tmp_path, mt):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello world\n" * 20, encoding="utf-8")
    out = tmp_path / "good.model"
    out.write_bytes(b"a good model")
    (tmp_path / "good.vocab").write_bytes(b"its vocab")
    with pytest.raises(DataError, match="good.model") as e:  # far more pieces than the text supports
        train_sentencepiece([str(tiny)], vocab_size=5000, model_type=mt, out=str(out))
    assert "\n" not in str(e.value)
    assert out.read_bytes() == b"a good model" and (tmp_path / "good.vocab").read_bytes() == b"its vocab"
    assert sorted(os.listdir(tmp_path)) == ["good.model", "good.vocab", "tiny.txt"]  # no temp files left

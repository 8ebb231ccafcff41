"""Pre-tokenized tfds datasets (`pretrax data prepare --tokenizer`): same batches as on-the-fly, never foreign ids."""

import hashlib
import logging
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY
from pretrax import config as config_lib
from pretrax.config import SourceSection
from pretrax.data.inspect import describe_examples
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.sources import load_source
from pretrax.data.spm_train import train_sentencepiece
from pretrax.data.tfds_prepare import prepare

NAME = "pretok_corpus"
TEXT = [
    "def add(a, b):\n    return a + b\n",
    "Résumé of the plan: ship the loader, then the tokenizer. ✓ \u2581 meta\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "The quick brown fox jumps over the lazy dog. " * 20,
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same files prepared three times: text only, with byte ids, with SentencePiece ids."""
    root = tmp_path_factory.mktemp("pretok")
    for i in range(30):
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / f"doc{i:02d}.txt").write_text(f"# document {i}\n" + TEXT[i % len(TEXT)] * (1 + i % 3))
    inputs = [str(root / "docs" / "*.txt")]
    spm = train_sentencepiece(inputs, vocab_size=420, out=str(root / "t.model"))
    dirs = {}
    for key, tokenizer in (("text", None), ("bytes", "bytes"), ("spm", spm)):
        dirs[key] = str(root / key)
        summary = prepare(inputs, name=NAME, data_dir=dirs[key], eval_percent=10.0, tokenizer=tokenizer)
        assert summary["splits"]["train"] > 20
    return {"dirs": dirs, "spm": spm}


def config(data_dir, tokenizer, *extra):
    return config_lib.load(None, TINY + ["data.source=tfds", f"data.tfds_name={NAME}", f"data.data_dir={data_dir}",
                                         "data.tfds_eval_split=validation", f"data.tokenizer={tokenizer}", *extra])


def batches(cfg, n=6):
    it = make_train_iterator(cfg)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()  # worker processes (data.num_workers) stop now, not at garbage collection


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def first_document(data_dir, tokenizer):
    train, _ = load_source(SourceSection(source="tfds", tfds_name=NAME, data_dir=data_dir), 0.0, tokenizer)
    return train[0]


@pytest.mark.parametrize("kind", ["bytes", "spm"])
def test_pretokenized_batches_equal_on_the_fly(data, kind):
    tokenizer = data["spm"] if kind == "spm" else "bytes"
    doc = first_document(data["dirs"][kind], tokenizer)
    assert isinstance(doc, np.ndarray) and doc.dtype == np.int32  # the stored ids are what is read
    assert isinstance(first_document(data["dirs"]["text"], tokenizer), str)
    assert isinstance(first_document(data["dirs"][kind], None), str)  # no tokenizer named: text
    assert_same(batches(config(data["dirs"][kind], tokenizer)), batches(config(data["dirs"]["text"], tokenizer)))


@pytest.mark.slow
def test_pretokenized_with_workers_equal_on_the_fly(data):
    cfg = config(data["dirs"]["spm"], data["spm"], "data.num_workers=2")
    assert_same(batches(cfg, 3), batches(config(data["dirs"]["text"], data["spm"]), 3))


@pytest.mark.parametrize("stored, wanted", [("bytes", "spm"), ("spm", "bytes")])
def test_other_tokenizer_falls_back_to_text(data, stored, wanted, caplog):
    tokenizer = data["spm"] if wanted == "spm" else "bytes"
    with caplog.at_level(logging.INFO, logger="pretrax.data.tfds_source"):
        assert isinstance(first_document(data["dirs"][stored], tokenizer), str)
    lines = [r.getMessage() for r in caplog.records if "stored token ids" in r.getMessage()]
    assert len(lines) == 1 and "on the fly" in lines[0]
    assert_same(batches(config(data["dirs"][stored], tokenizer)), batches(config(data["dirs"]["text"], tokenizer)))


@pytest.mark.slow
def test_fingerprint_read_back_in_a_fresh_process(data):
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        "from pretrax.data.sources import stored_tokenizer\n"
        "for d in sys.argv[1:]:\n"
        f"    info = stored_tokenizer(tfds.builder({NAME!r}, data_dir=d))\n"
        "    print(info and info['tokenizer'])\n"
    )
    dirs = data["dirs"]
    proc = subprocess.run([sys.executable, "-c", code, dirs["text"], dirs["bytes"], dirs["spm"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(data["spm"], "rb") as f:
        spm_hash = hashlib.sha256(f.read()).hexdigest()
    assert proc.stdout.split() == ["None", "bytes", f"sentencepiece:sha256:{spm_hash}"]


def test_inspect_decodes_pretokenized_data(data):
    out = describe_examples(config(data["dirs"]["spm"], data["spm"]), 3)
    assert out.count("--- example") == 3 and "document" in out

"""Everything known at start-up is checked before the first write (issue 20, promise 1).

Each case runs the real CLI entry point on a real corpus: one stderr line, exit 2, and the run dir
is not created (or, when it exists, stays byte for byte). Before these checks, a corpus with no
held-out documents trained, wrote checkpoints, and only then failed at the first evaluation.
Documents are named by relative paths (the test runs in tmp_path), so which side of the
held-out split each falls on is fixed.
"""

import os

import pytest

from pretrax import config as config_lib
from pretrax.cli import main
from pretrax.data.pipeline import check_splits, _split

CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"))


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_docs(*names):
    for i, name in enumerate(names):
        with open(name, "w") as f:
            f.write(f"document {i}: some text to train on\n")


def refused(capsys, *overrides):
    """Run `pretrax train` on run dir 'run'; return its one error line."""
    assert main(["train", CONFIG, "run.dir=run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretrax: error: "), err
    return err


def test_one_text_file_with_the_defaults_is_refused_before_training(here, capsys):
    write_docs("one.txt")
    err = refused(capsys, "data.source=text", "data.paths=[one.txt]")
    assert "no held-out documents to evaluate on" in err and "none of the 1 document(s) of text:one.txt" in err
    assert "chosen per document" in err and "at least 2" in err
    assert "add files to data.paths, or set data.text_split=blank_lines" in err
    assert not (here / "run").exists()


def test_heldout_percent_zero_is_refused(here, capsys):
    write_docs("one.txt")
    err = refused(capsys, "data.source=text", "data.paths=[one.txt]", "data.heldout_percent=0")
    assert "data.heldout_percent=0 holds out none of the 1 document(s)" in err
    assert not (here / "run").exists()


def test_raising_heldout_percent_on_one_document_names_the_real_fix(here, capsys):
    write_docs("one.txt")
    err = refused(capsys, "data.source=text", "data.paths=[one.txt]", "data.heldout_percent=99.99")
    assert "no training documents: data.heldout_percent=99.99 holds out all 1 document(s) of data source " \
           "text:one.txt" in err
    assert "at least 2: add files to data.paths" in err
    assert not (here / "run").exists()


def test_one_jsonl_line_asks_for_more_documents(here, capsys):
    with open("one.jsonl", "w") as f:
        f.write('{"text": "the only document"}\n')
    err = refused(capsys, "data.source=jsonl", "data.paths=[one.jsonl]")
    assert "none of the 1 document(s) of jsonl:one.jsonl" in err and "add documents to data.paths" in err
    assert not (here / "run").exists()


def test_several_documents_none_held_out_names_a_percent_that_works(here, capsys):
    write_docs("a.txt", "b.txt", "c.txt", "d.txt", "e.txt")
    overrides = ["data.source=text", "data.paths=[a.txt, b.txt, c.txt, d.txt, e.txt]"]
    err = refused(capsys, *overrides, "data.heldout_percent=0")
    assert "holds out none of the 5 documents" in err
    assert not (here / "run").exists()
    suggested = err.split("data.heldout_percent=")[-1].split(" holds out at least one")[0]
    cfg = config_lib.load(CONFIG, overrides + [f"data.heldout_percent={suggested}"])
    check_splits(cfg)  # the advice works: something held out, something left to train on
    train, heldout = _split(cfg)
    assert len(heldout[0]) >= 1 and len(train[0]) >= 1


def test_an_existing_run_dir_stays_byte_for_byte(here, capsys):
    write_docs("one.txt")
    os.makedirs("run")
    (here / "run" / "notes.txt").write_bytes(b"kept as it is\n")
    refused(capsys, "data.source=text", "data.paths=[one.txt]")
    assert sorted(os.listdir("run")) == ["notes.txt"]
    assert (here / "run" / "notes.txt").read_bytes() == b"kept as it is\n"


def test_tokenizer_larger_than_the_model_vocab_is_refused(here, capsys):
    err = refused(capsys, "model.vocab_size=256")
    assert "model.vocab_size (256) is smaller than the tokenizer's 362 ids" in err
    assert not (here / "run").exists()


def test_the_default_corpus_passes():
    check_splits(config_lib.load(CONFIG))  # the stdlib corpus: thousands of documents on both sides

"""Data sources: text / jsonl files, tfds (ArrayRecord) and the tfds_prepare round trip, on real files."""

import json
import logging
import os
import pickle
import subprocess
import sys

import pytest

from pretrax.config import SourceSection
from pretrax.data.corpus import Corpus, is_heldout
from pretrax.data.file_source import named_files
from pretrax.data.sources import FileCorpus, load_source
from pretrax.data.tfds_prepare import prepare
from pretrax.errors import DataError


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def docs(corpus):
    return [corpus[i] for i in range(len(corpus))]


def load_all(src):
    """(all documents in corpus order, train, heldout) with nothing held out."""
    train, heldout = load_source(src, 0.0)
    assert len(heldout) == 0
    return docs(train), train


# ---------------------------------------------------------------- text


def test_text_one_document_per_file_sorted_and_deduplicated(tmp_path):
    b = write(tmp_path / "b.txt", "beta\n")
    a = write(tmp_path / "a.txt", "alpha\n\nstill alpha\n")
    write(tmp_path / "empty.txt", "  \n\n")
    src = SourceSection(source="text", paths=(b, str(tmp_path / "*.txt"), a))
    texts, corpus = load_all(src)
    assert texts == ["alpha\n\nstill alpha\n", "beta\n"]
    assert corpus.names == ("a.txt", "b.txt")  # named relative to the folder the paths name
    assert corpus.stats.empty == 1


def test_text_blank_line_blocks_with_offsets(tmp_path):
    p = write(tmp_path / "t.txt", "\n\nfirst para\nline two\n\n\n  \nsecond\r\n\r\nthird, no newline")
    texts, corpus = load_all(SourceSection(source="text", paths=(p,), text_split="blank_lines"))
    assert texts == ["first para\nline two", "second", "third, no newline"]
    assert corpus.names == ("t.txt#0", "t.txt#1", "t.txt#2")


def test_globs_recursive_and_sorted(tmp_path):
    write(tmp_path / "d" / "x" / "2.txt", "two")
    write(tmp_path / "d" / "1.txt", "one")
    write(tmp_path / "d" / "skip.md", "not matched")
    texts, _ = load_all(SourceSection(source="text", paths=(str(tmp_path / "d" / "**" / "*.txt"),)))
    assert texts == ["one", "two"]


def test_non_utf8_bytes_replaced_and_counted(tmp_path, caplog):
    p = write(tmp_path / "bad.txt", b"ok \xff\xfe end\n\nclean block\n")
    with caplog.at_level(logging.WARNING):
        texts, corpus = load_all(SourceSection(source="text", paths=(p,), text_split="blank_lines"))
    assert texts == ["ok \ufffd\ufffd end", "clean block"]
    assert corpus.stats.invalid_utf8 == 1
    assert any("1 document with invalid UTF-8" in r.getMessage() and p in r.getMessage() for r in caplog.records)


def test_huge_single_line_document(tmp_path):
    big = "word " * 400_000
    p = write(tmp_path / "big.jsonl", json.dumps({"text": big}) + "\n")
    texts, _ = load_all(SourceSection(source="jsonl", paths=(p,)))
    assert texts == [big]


# ---------------------------------------------------------------- jsonl


def test_jsonl_bad_lines_skipped_counted_and_logged(tmp_path, caplog):
    lines = [
        json.dumps({"text": "first", "id": 1}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps({"text": None}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "   "}),
        "",  # a blank line is not a record
        json.dumps({"text": "second \u00e9 \ud83d\ude00"}),
        '{"text": "lone \\udc80 surrogate"}',
    ]
    p = write(tmp_path / "data.jsonl", "\n".join(lines) + "\n" + "{truncated")
    with caplog.at_level(logging.WARNING):
        texts, corpus = load_all(SourceSection(source="jsonl", paths=(p,)))
    assert texts == ["first", "second \u00e9 \U0001f600", "lone ? surrogate"]
    s = corpus.stats
    assert (s.malformed, s.missing_field, s.not_string, s.empty, s.invalid_utf8) == (3, 1, 2, 1, 1)
    assert corpus.names == ("data.jsonl#1", "data.jsonl#9", "data.jsonl#10")
    msgs = [r.getMessage() for r in caplog.records]
    assert f"jsonl: 3 malformed lines, 1 line without a 'text' field, 2 lines whose 'text' is not a string, " \
           f"1 empty document skipped in {p}" in msgs


def test_jsonl_only_malformed_message_and_custom_field(tmp_path, caplog):
    p = write(tmp_path / "c.jsonl", b'{"body": "x\xff"}\nnope\nnope\n{"body": "y"}\n')
    with caplog.at_level(logging.WARNING):
        texts, corpus = load_all(SourceSection(source="jsonl", paths=(p,), text_field="body"))
    assert texts == ["x\ufffd", "y"]
    assert corpus.stats.invalid_utf8 == 1
    assert f"jsonl: 2 malformed lines skipped in {p}" in [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------- split, pickling


def test_heldout_is_disjoint_deterministic_and_by_name(tmp_path):
    p = write(tmp_path / "many.txt", "\n\n".join(f"document number {i}" for i in range(400)))
    src = SourceSection(source="text", paths=(p,), text_split="blank_lines")
    train, heldout = load_source(src, 20.0)
    assert 40 < len(heldout) < 130 and len(train) + len(heldout) == 400
    assert set(train.names).isdisjoint(heldout.names)
    assert all(is_heldout(n, 20.0) for n in heldout.names)
    train2, heldout2 = load_source(src, 20.0)
    assert docs(heldout2) == docs(heldout) and train2.fingerprint == train.fingerprint
    assert sorted(docs(train) + docs(heldout), key=lambda t: int(t.split()[-1])) == [
        f"document number {i}" for i in range(400)]
    # appending documents keeps every old one on its side
    write(tmp_path / "many.txt", "\n\n".join(f"document number {i}" for i in range(500)))
    _, heldout3 = load_source(src, 20.0)
    assert set(heldout.names) <= set(heldout3.names)
    # picklable (grain worker processes) and reads the same
    clone = pickle.loads(pickle.dumps(train))
    assert docs(clone) == docs(train2)
    assert isinstance(train, Corpus) and isinstance(train, FileCorpus)


def test_the_split_and_fingerprint_do_not_depend_on_where_the_data_is_or_the_working_directory(tmp_path, monkeypatch):
    for i in range(40):
        write(tmp_path / "mnt" / "data" / "sub" / f"{i}.txt", f"document {i}")
        write(tmp_path / "mnt" / "data" / f"top{i}.jsonl", json.dumps({"text": f"record {i}"}) + "\n")

    def split_of(text_glob, jsonl_glob):
        out = []
        for source, pattern in (("text", text_glob), ("jsonl", jsonl_glob)):
            train, heldout = load_source(SourceSection(source=source, paths=(pattern,)), 20.0)
            out.append((train.names, heldout.names, train.fingerprint, docs(heldout)))
        return out

    absolute = split_of(str(tmp_path / "mnt" / "data" / "**" / "*.txt"), str(tmp_path / "mnt/data/top*.jsonl"))
    assert all(held for _, held, _, _ in absolute) and all(train for train, _, _, _ in absolute)
    assert absolute[0][0][0] == "sub/0.txt" and absolute[1][1][0].endswith(".jsonl#1")
    monkeypatch.chdir(tmp_path / "mnt")
    assert split_of("data/**/*.txt", "./data/top*.jsonl") == absolute  # relative paths, another cwd
    os.rename(tmp_path / "mnt", tmp_path / "elsewhere")  # the same data mounted at another path
    monkeypatch.chdir(tmp_path)
    assert split_of("elsewhere/data/**/*.txt", str(tmp_path / "elsewhere/data/top*.jsonl")) == absolute


def test_files_whose_names_would_collide_are_named_by_the_folders_that_tell_them_apart(tmp_path):
    a = write(tmp_path / "one" / "x.txt", "from one")
    b = write(tmp_path / "two" / "x.txt", "from two")
    c = write(tmp_path / "two" / "y.txt", "why")
    texts, corpus = load_all(SourceSection(source="text", paths=(b, a, c)))
    assert corpus.names == ("one/x.txt", "two/x.txt", "y.txt") and texts == ["from one", "from two", "why"]


def test_stdlib_source_is_the_existing_split():
    train, heldout = load_source(SourceSection(source="stdlib"), 2.0)
    assert len(train) > 100 and len(heldout) > 0
    assert set(train.names).isdisjoint(heldout.names)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("case", ["missing", "glob", "directory", "no_paths", "zero_docs", "bucket"])
def test_bad_file_sources_fail_at_start_up_with_one_line(tmp_path, case):
    write(tmp_path / "empty.jsonl", "\n{bad\n")
    paths = {
        "missing": (str(tmp_path / "nope.txt"),),
        "glob": (str(tmp_path / "*.parquet"),),
        "directory": (str(tmp_path),),
        "no_paths": (),
        "zero_docs": (str(tmp_path / "empty.jsonl"),),
        "bucket": (str(tmp_path / "empty.jsonl"), "gs://my-bucket/text/*.jsonl"),
    }[case]
    with pytest.raises(DataError) as e:
        load_source(SourceSection(source="jsonl", paths=paths), 2.0)
    msg = str(e.value)
    assert "\n" not in msg
    expected = {"missing": "nope.txt", "glob": "*.parquet", "directory": "is a directory",
                "no_paths": "data.paths", "zero_docs": "1 malformed",
                "bucket": "'gs://my-bucket/text/*.jsonl' is in object storage, and text and jsonl sources read local "
                          "files; copy them to a disk, or make a tfds dataset every host reads from the bucket: "
                          "pretrax data prepare"}[case]
    assert expected in msg


# ---------------------------------------------------------------- tfds


CORPUS_FILES = {
    "a.txt": "The first text file.\nIt has two lines.\n",
    "b.jsonl": "\n".join([json.dumps({"text": f"json document {i} \u00e9"}) for i in range(60)] + ["{oops"]) + "\n",
    "c.txt": b"bytes \xff here\n",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared dataset (train + validation) shared by the tfds tests, and its local-source twin."""
    root = tmp_path_factory.mktemp("tfds")
    inputs = [write(root / "in" / name, data) for name, data in CORPUS_FILES.items()]
    data_dir = str(root / "data")
    summary = prepare([str(root / "in" / "*")], name="pretrax_test_corpus", data_dir=data_dir, eval_percent=25.0)
    return {"root": root, "inputs": inputs, "data_dir": data_dir, "summary": summary}


def local_documents(prepared, heldout_percent):
    """What the same files give through the text/jsonl sources, in tfds_prepare's order."""
    files, keys = named_files([str(prepared["root"] / "in" / "*")], "input")  # as prepare named them
    assert files == sorted(prepared["inputs"])
    corpus = FileCorpus.scan(files, [p.endswith(".jsonl") for p in files], keys=keys)
    names = [corpus.name(i) for i in range(len(corpus))]
    train = [corpus[i] for i, n in enumerate(names) if not is_heldout(n, heldout_percent)]
    held = [corpus[i] for i, n in enumerate(names) if is_heldout(n, heldout_percent)]
    return train, held


def test_prepare_summary_and_layout(prepared):
    s = prepared["summary"]
    assert s["splits"]["train"] + s["splits"]["validation"] == 62
    assert s["skipped"]["malformed"] == 1 and s["invalid_utf8"] == 1
    files = set(os.listdir(s["path"]))
    assert {"dataset_info.json", "features.json"} <= files
    assert any(".array_record-" in f for f in files)
    assert not [d for d in os.listdir(prepared["data_dir"]) if d.startswith(".")]  # no staging left behind


def test_tfds_round_trip_with_eval_split(prepared):
    src = SourceSection(source="tfds", tfds_name="pretrax_test_corpus", data_dir=prepared["data_dir"],
                        tfds_eval_split="validation")
    train, heldout = load_source(src, 2.0)  # heldout_percent is unused when tfds_eval_split is set
    want_train, want_held = local_documents(prepared, 25.0)
    assert docs(train) == want_train and docs(heldout) == want_held
    assert "bytes \ufffd here\n" in want_train + want_held
    assert len(heldout) == prepared["summary"]["splits"]["validation"] > 0
    clone = pickle.loads(pickle.dumps(train))
    assert clone[len(clone) - 1] == want_train[-1] and clone.fingerprint == train.fingerprint


def test_tfds_hash_heldout_of_one_split(prepared):
    src = SourceSection(source="tfds", tfds_name="pretrax_test_corpus:1.0.0", data_dir=prepared["data_dir"],
                        tfds_eval_split="")  # "": hold out a share of train, although a validation split exists
    n = prepared["summary"]["splits"]["train"]
    train, heldout = load_source(src, 30.0)
    assert len(train) + len(heldout) == n and 0 < len(heldout) < n
    train_idx = [train.record_index(i) for i in range(len(train))]
    held_idx = [heldout.record_index(i) for i in range(len(heldout))]
    assert sorted(train_idx + held_idx) == list(range(n))
    all_docs, _ = local_documents(prepared, 25.0)
    assert docs(train) == [all_docs[i] for i in train_idx]
    assert docs(load_source(src, 30.0)[1]) == docs(heldout)  # deterministic
    assert train.fingerprint != heldout.fingerprint


@pytest.mark.slow
def test_tfds_found_by_name_in_a_fresh_process(prepared):
    code = (
        "import json, sys\n"
        "from pretrax.config import SourceSection\n"
        "from pretrax.data.sources import load_source\n"
        "src = SourceSection(source='tfds', tfds_name='pretrax_test_corpus', data_dir=sys.argv[1],"
        " tfds_eval_split='validation')\n"
        "train, held = load_source(src, 0.0)\n"
        "print(json.dumps([[train[i] for i in range(len(train))], [held[i] for i in range(len(held))]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, prepared["data_dir"]], capture_output=True, text=True,
                         timeout=120, check=True)
    train, held = json.loads(out.stdout.strip().splitlines()[-1])
    assert (train, held) == tuple(local_documents(prepared, 25.0))


def test_prepare_refuses_to_overwrite_then_replaces_on_request(prepared, tmp_path):
    data_dir = prepared["data_dir"]
    info = os.path.join(prepared["summary"]["path"], "dataset_info.json")
    before = open(info).read()
    with pytest.raises(DataError, match="already exists.*overwrite"):
        prepare(prepared["inputs"], name="pretrax_test_corpus", data_dir=data_dir, eval_percent=25.0)
    assert open(info).read() == before
    # overwrite=True replaces it (into a copy of the data_dir, keeping the shared fixture intact)
    p = write(tmp_path / "new.txt", "replacement")
    other = str(tmp_path / "data")
    prepare([p], name="small_corpus", data_dir=other)
    prepare([p, p], name="small_corpus", data_dir=other, overwrite=True)
    train, _ = load_source(SourceSection(source="tfds", tfds_name="small_corpus", data_dir=other), 0.0)
    assert docs(train) == ["replacement"]


def test_tfds_errors_name_the_problem(prepared, tmp_path):
    data_dir = prepared["data_dir"]
    cases = [
        (dict(tfds_name="pretrax_test_corpsu", data_dir=data_dir), "pretrax_test_corpus"),  # close name listed
        (dict(tfds_name="pretrax_test_corpus", data_dir=str(tmp_path / "nowhere")), "nowhere"),
        (dict(tfds_name="mnist", data_dir=data_dir), "not prepared"),
        (dict(tfds_name="pretrax_test_corpus", data_dir=data_dir, text_field="content"), "'content'"),
        (dict(tfds_name="pretrax_test_corpus", data_dir=data_dir, tfds_split="test"), "valid splits"),
        (dict(tfds_name="pretrax_test_corpus", data_dir=data_dir, tfds_eval_split="dev"), "'dev'"),
        (dict(tfds_name=""), "tfds_name"),
    ]
    for fields, expected in cases:
        with pytest.raises(DataError) as e:
            load_source(SourceSection(source="tfds", **fields), 2.0)
        assert expected in str(e.value) and "\n" not in str(e.value), (fields, str(e.value))


def test_prepare_rejects_bad_arguments(tmp_path):
    p = write(tmp_path / "x.txt", "x")
    for kwargs, expected in [
        (dict(name="Bad-Name"), "not valid"),
        (dict(name="ok", version="one"), "version"),
        (dict(name="mnist"), "catalog"),
        (dict(name="ok", input_format="csv"), "csv"),
    ]:
        with pytest.raises(DataError, match=expected):
            prepare([p], data_dir=str(tmp_path / "d"), **kwargs)
    with pytest.raises(DataError, match="missing.txt"):
        prepare([str(tmp_path / "missing.txt")], name="ok", data_dir=str(tmp_path / "d"))
    assert not (tmp_path / "d" / "ok").exists()


def test_prepare_never_writes_an_empty_validation_split(tmp_path):
    """Few documents and a small eval_percent: the hash may hold out none; one is held out instead."""
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(f"document number {i}\n")
    summary = prepare([str(tmp_path / "*.txt")], name="tiny_eval_corpus", data_dir=str(tmp_path / "tfds"),
                      eval_percent=0.5)
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(tmp_path / "tfds" / "tiny_eval_corpus" / "1.0.0"))
    sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
    assert sizes == {"train": 2, "validation": 1}, (sizes, summary)

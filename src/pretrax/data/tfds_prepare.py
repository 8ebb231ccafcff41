"""Build a tfds dataset (ArrayRecord) from local text or JSON-lines files.

``prepare(inputs, name=..., data_dir=...)`` writes ``DATA_DIR/NAME/VERSION/``
with the usual tfds files (dataset_info.json, features.json and
``NAME-train.array_record-NNNNN-of-NNNNN`` shards), one feature
``{"text": Text()}``, split ``train`` and, when ``eval_percent > 0``,
``validation``.

With ``tokenizer`` ("bytes" or a SentencePiece ``.model`` path) every record
also holds ``tokens``: the document's ids from that tokenizer, without bos/eos
(int32, variable length, stored as raw bytes). Which tokenizer made them is
written to ``VERSION/pretrax_tokens.json`` (``{"feature": "tokens",
"text_field": "text", "tokenizer": FINGERPRINT, "tokenizer_name": ...}``; the fingerprint is
"bytes" or a sha256 of the model file's bytes) and named in the dataset
description. The tfds source reads the stored ids only when that fingerprint
equals ``data.tokenizer``'s (see ``tfds_source.tfds_corpora``), else the text.

Reading it back needs no code from here: ``tfds.builder(NAME, data_dir=DIR)``
finds no registered builder class by that name, so tfds falls back to
``builder_from_files``, which reads ``DIR/NAME/<latest version>/dataset_info.json``
and features.json. That is the same call ``load_source`` makes for ``c4/en``,
so ``SourceSection(source="tfds", tfds_name=NAME, data_dir=DIR)`` works in any
fresh process. The builder class is created per call and never registered, so
this process reads the dataset exactly as a fresh one does.

Documents are indexed with the same code as the ``text`` / ``jsonl`` sources
(bad records skipped, counted and logged), in the same order, and written in
that order (no tfds shuffling); the validation documents are the ones the
``text`` / ``jsonl`` source would hold out at ``heldout_percent=eval_percent``.

The dataset is generated into a hidden staging directory inside data_dir and
moved into place with one rename once complete: an interrupted run leaves no
half-written NAME/VERSION, and an existing one is never touched unless
``overwrite=True`` (then it is replaced only after the new one is complete).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Literal, Sequence

from pretrax import storage
from pretrax.data.corpus import Corpus, heldout_bucket, is_heldout
from pretrax.data.file_source import FileCorpus, is_jsonl_path, named_files
from pretrax.data.tfds_source import TOKENS_FEATURE, TOKENS_INFO
from pretrax.errors import DataError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _builder_class(name: str, version: str, splits: dict[str, Corpus], description: str, tokenizer=None):
    """A GeneratorBasedBuilder subclass named ``name`` yielding these corpora's documents (not registered).

    With a tokenizer, each record also holds TOKENS_FEATURE: the text's ids (no bos/eos).
    """
    import numpy as np
    import tensorflow_datasets as tfds

    features = {"text": tfds.features.Text()}
    if tokenizer is not None:  # raw bytes: no int64 upcast, and a fast decode
        features[TOKENS_FEATURE] = tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                                        encoding=tfds.features.Encoding.BYTES)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,  # keep the input order: the same order the text/jsonl source reads
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split_name: self._generate_examples(split_name) for split_name in splits}

    def _generate_examples(self, split_name):
        corpus = splits[split_name]
        for i in range(len(corpus)):
            text = corpus[i]
            record = {"text": text}
            if tokenizer is not None:
                record[TOKENS_FEATURE] = np.asarray(tokenizer.encode(text), np.int32)
            yield i, record

    attrs = {
        "name": name,
        "VERSION": tfds.core.Version(version),
        "RELEASE_NOTES": {version: "Prepared from local files by pretrax."},
        "__module__": __name__,
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    class_name = "".join(part.capitalize() for part in name.split("_")) or "Dataset"
    return type(class_name, (tfds.core.GeneratorBasedBuilder,), attrs, skip_registration=True)


def prepare(
    inputs: Sequence[str],
    *,
    name: str,
    data_dir: str,
    input_format: Literal["text", "jsonl", "auto"] = "auto",
    text_field: str = "text",
    text_split: Literal["file", "blank_lines"] = "file",
    version: str = "1.0.0",
    eval_percent: float = 0.0,
    overwrite: bool = False,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Build tfds dataset ``name:version`` in ``data_dir`` from local files; returns a summary.

    inputs: files or globs (sorted, deduplicated). input_format "auto" reads
    ``.jsonl`` / ``.json`` / ``.ndjson`` files as JSON lines and everything
    else as text. eval_percent: share of documents (by a hash of their name)
    written to a ``validation`` split; 0 writes ``train`` only. tokenizer:
    "bytes" or a SentencePiece .model path to also store each document's ids
    (module docstring); None stores text only.

    Summary: {"name", "version", "path", "splits": {split: count},
    "skipped": {reason: count}, "invalid_utf8": count, "tokenizer": fingerprint or None}.
    """
    import tensorflow_datasets as tfds

    if not _NAME.match(name or ""):
        raise DataError(f"dataset name {name!r} is not valid: use lower_snake_case letters, digits and _ "
                        "(starting with a letter), e.g. 'my_corpus'")
    try:
        tfds.core.Version(version)
    except (ValueError, TypeError):
        raise DataError(f"dataset version {version!r} is not valid: use MAJOR.MINOR.PATCH, e.g. '1.0.0'") from None
    if name in tfds.list_builders(with_community_datasets=False):
        raise DataError(f"dataset name {name!r} is a tfds catalog dataset; reading it by name would use tfds's own "
                        "builder, so choose another name")
    if input_format not in ("text", "jsonl", "auto"):
        raise DataError(f"input format {input_format!r} is not valid; valid choices: text, jsonl, auto")
    if not 0 <= eval_percent < 100:
        raise DataError(f"eval_percent must be in [0, 100), got {eval_percent}")
    if not data_dir:
        raise DataError("prepare needs a data_dir to write the dataset into")
    storage.check_url(data_dir, "--data-dir")  # a local path or gs://; s3:// and the like are refused

    tok = None
    if tokenizer is not None:
        from pretrax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)  # ConfigError (one line) for an unknown name or a bad model file

    files, keys = named_files(inputs, input_format if input_format != "auto" else "input")
    jsonl = [input_format == "jsonl" or (input_format == "auto" and is_jsonl_path(f)) for f in files]
    corpus = FileCorpus.scan(files, jsonl, text_split=text_split, text_field=text_field, keys=keys)
    if len(corpus) == 0:
        s = corpus.stats
        raise DataError(f"no documents in {len(files)} input file(s) {list(inputs)} ({s.skipped} skipped: "
                        f"{s.empty} empty, {s.malformed} malformed, {s.missing_field + s.not_string} without a "
                        f"string {text_field!r} field)")

    held = [is_heldout(corpus.name(i), eval_percent) for i in range(len(corpus))]
    if eval_percent > 0 and not any(held) and len(corpus) > 1:
        # few documents: the hash held out none (0.9^40 = 1.5% at 40 documents and 10%); an empty split
        # cannot be written, so hold out the one whose hash bucket is lowest (the next one the hash would take)
        lowest = min(range(len(corpus)), key=lambda i: heldout_bucket(corpus.name(i)))
        held[lowest] = True
        log.warning("prepare: eval_percent=%s held out no document by hash; holding out %r", eval_percent,
                    corpus.name(lowest))
    splits: dict[str, Corpus] = {"train": corpus.take([i for i, h in enumerate(held) if not h])}
    if eval_percent > 0 and any(held):
        splits["validation"] = corpus.take([i for i, h in enumerate(held) if h])
    if len(splits["train"]) == 0:
        raise DataError(f"no training documents left after holding out eval_percent={eval_percent}% "
                        f"of {len(corpus)}; lower eval_percent")

    remote = storage.is_remote(data_dir)
    if remote:  # built locally, then uploaded: ArrayRecord writes local files only
        storage.check_reachable(data_dir, "--data-dir")
        final = storage.join(data_dir, name, version)
        exists = storage.exists(storage.join(final, "dataset_info.json"))
    else:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        final = os.path.join(data_dir, name, version)
        exists = os.path.exists(final)
    if exists and not overwrite:
        raise DataError(f"tfds dataset {name}:{version} already exists at {final!r}; pass overwrite=True "
                        "(--overwrite) to replace it, or choose another name or version")
    if not remote:
        os.makedirs(data_dir, exist_ok=True)

    description = f"Prepared by pretrax from {len(files)} local file(s): {', '.join(files[:5])}" + (
        " ..." if len(files) > 5 else "")
    if tok is not None:
        description += f". Records hold {TOKENS_FEATURE!r}: ids (no bos/eos) from tokenizer {tok.fingerprint}"
    cls = _builder_class(name, version, splits, description, tok)
    staging = tempfile.mkdtemp(prefix=f".prepare-{name}-", dir=None if remote else data_dir)
    try:
        builder = cls(data_dir=staging, file_format="array_record")
        with _tfds_quiet():
            builder.download_and_prepare(download_dir=os.path.join(staging, "downloads"),
                                         download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        built = os.path.join(staging, name, version)
        if not os.path.isfile(os.path.join(built, "dataset_info.json")):
            raise DataError(f"tfds did not write {name}:{version} (no dataset_info.json in {built!r})")
        if tok is not None:
            with open(os.path.join(built, TOKENS_INFO), "w") as f:
                json.dump({"feature": TOKENS_FEATURE, "text_field": "text", "tokenizer": tok.fingerprint,
                           "tokenizer_name": tokenizer}, f)
        if remote:
            _upload(built, final)
        else:
            _move_into_place(built, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    s = corpus.stats
    summary = {
        "name": name,
        "version": version,
        "path": final,
        "splits": {k: len(v) for k, v in splits.items()},
        "skipped": {"empty": s.empty, "malformed": s.malformed, "missing_field": s.missing_field,
                    "not_string": s.not_string},
        "invalid_utf8": s.invalid_utf8,
        "tokenizer": tok.fingerprint if tok is not None else None,
    }
    log.info("prepared tfds dataset %s:%s at %s: %s", name, version, final,
             ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    return summary


@contextlib.contextmanager
def _tfds_quiet():
    """No tfds progress bars and no tfds notes on stdout while a dataset is built.

    tfds prints "Downloading and preparing dataset ... to <the staging dir>" and "downloaded and
    prepared to <the staging dir>" (a path that is renamed away a moment later) and redraws
    progress bars with carriage returns, which a pod's log file keeps as noise. Its notes go to
    this module's debug log instead; the summary is pretrax's own.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    notes = io.StringIO()
    try:
        with contextlib.redirect_stdout(notes):
            yield
    finally:
        tfds.display_progress_bar(was_active)
        if notes.getvalue().strip():
            log.debug("tfds: %s", notes.getvalue().strip())


def _move_into_place(built: str, final: str) -> None:
    """Rename the built dataset to its final name; an old one (--overwrite) is moved aside only now."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.exists(final):
        os.rename(built, final)
        return
    old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(final)}-", dir=os.path.dirname(final))
    os.rename(final, os.path.join(old, os.path.basename(final)))
    os.rename(built, final)
    shutil.rmtree(old, ignore_errors=True)


def _upload(built: str, final: str) -> None:
    """Copy a built dataset to a gs:// data_dir; dataset_info.json goes last, since it marks the dataset prepared.

    With --overwrite, objects of the old version that the new one does not have are deleted afterwards.
    """
    files = sorted((os.path.relpath(os.path.join(d, f), built) for d, _, fs in os.walk(built) for f in fs),
                   key=lambda rel: rel == "dataset_info.json")
    for rel in files:
        with open(os.path.join(built, rel), "rb") as f:
            storage.write_bytes(storage.join(final, *rel.split(os.sep)), f.read())
    new = {storage.join(final, *rel.split(os.sep)) for rel in files}
    for path, _ in list(storage.walk_files(final)):
        if path not in new:
            storage.remove(path)


__all__ = ["prepare"]

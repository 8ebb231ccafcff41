"""Corpora for every data source: stdlib, local text / JSON-lines files, and tfds.

``load_source(src, heldout_percent, tokenizer) -> (train, heldout)`` is the one
entry point. Every corpus it returns supports ``len()``, ``corpus[i] -> str``
(or token ids for a pre-tokenized tfds dataset), ``fingerprint`` and pickling
(what ``grain.MapDataset.source`` and worker processes need). The readers live
in file_source.py and tfds_source.py.
"""

from __future__ import annotations

from typing import Iterable

from pretrax.config import SourceSection
from pretrax.data.corpus import Corpus, is_heldout, split, stdlib_corpus
from pretrax.data.file_source import FileCorpus, FileStats, expand_paths, file_corpus, is_jsonl_path
from pretrax.data.tfds_source import TOKENS_FEATURE, TOKENS_INFO, TfdsCorpus, stored_tokenizer, tfds_corpora, to_text
from pretrax.errors import DataError


SOURCES = ("stdlib", "text", "jsonl", "tfds")


def load_source(src: SourceSection, heldout_percent: float,
                tokenizer: str | None = None) -> tuple[Corpus, Corpus]:
    """(train, held-out) corpora of one source; DataError at start-up for anything that cannot be read.

    tokenizer (data.tokenizer): a pre-tokenized tfds dataset whose ids come from it yields those ids, not text.
    """
    if not 0 <= heldout_percent <= 100:
        raise DataError(f"data.heldout_percent must be in [0, 100], got {heldout_percent}")
    if src.source == "stdlib":
        return split(stdlib_corpus(), heldout_percent)
    if src.source in ("text", "jsonl"):
        return split(file_corpus(src), heldout_percent)
    if src.source == "tfds":
        return tfds_corpora(src, heldout_percent, tokenizer)
    raise DataError(f"unknown data.source {src.source!r}; valid choices: {', '.join(SOURCES)}")


def iter_documents(corpus: Corpus) -> Iterable[str]:
    for i in range(len(corpus)):
        yield corpus[i]


__all__ = ["TOKENS_FEATURE", "TOKENS_INFO", "FileCorpus", "FileStats", "TfdsCorpus", "stored_tokenizer", "expand_paths", "file_corpus", "is_heldout",
           "is_jsonl_path", "load_source", "to_text"]

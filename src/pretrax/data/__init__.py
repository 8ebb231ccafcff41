"""Data: the embedded stdlib corpus, tokenizers, packing and the grain pipeline.

The trainer needs only ``make_train_iterator``, ``eval_batches`` and
``load_tokenizer``; see pipeline.py for how batches are built and resumed.
"""

from pretrax.data.corpus import Corpus, split, stdlib_corpus
from pretrax.data.sources import load_source
from pretrax.data.packing import RowPacker
from pretrax.data.pipeline import (
    FEATURES,
    OBJECTIVES,
    BatchIterator,
    eval_batches,
    make_train_iterator,
    merge_states,
)
from pretrax.data.tokenizer import ByteTokenizer, load_tokenizer

__all__ = [
    "FEATURES",
    "OBJECTIVES",
    "BatchIterator",
    "ByteTokenizer",
    "Corpus",
    "RowPacker",
    "eval_batches",
    "load_source",
    "load_tokenizer",
    "make_train_iterator",
    "merge_states",
    "split",
    "stdlib_corpus",
]

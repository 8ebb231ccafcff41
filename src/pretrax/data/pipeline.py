"""The input pipeline: corpus -> tokenize -> objective -> pack -> batch -> host rows.

Documents flow through a grain ``MapDataset`` (random access, lazy)::

    source(corpus) -> shuffle(seed; reshuffled every epoch) -> repeat()
        -> map(tokenize: bos + tokens + eos) -> random_map(objective, rng from (seed, index))

Element ``g`` of that dataset is the g-th document drawn over all epochs; its
randomness (epoch order, and the objective's rng) depends only on (seed, g).

Rows: the global batch has B rows, and row r of every batch is packed from its
own stream of documents, ``docs[r::B]`` (row streams). So

* a host owns a contiguous block of rows and reads only those rows' documents:
  hosts read disjoint shards, and host batches stacked in order are exactly the
  one-host batch, whatever the number of hosts;
* the iterator state is two integers per row (next document, offset in it),
  restored in O(1); states of all hosts merge into one global state
  (``merge_states``) that any host layout can resume from;
* a long document fills consecutive rows of one stream, one row per batch,
  instead of filling a whole batch with pieces of itself.

Objectives (objectives.py: causal_lm, prefix_lm, span_corruption, ul2) are a
function (tokens, rng) -> dict of equal-length arrays with the
``objective_features(objective)`` keys. They run per document, before packing;
the denoising objectives emit whole examples that the packer never splits.
With ``data.concat_documents`` (the default) documents only tokenize here, and
each row cuts its examples from its documents concatenated
(objectives.ConcatExamples); the state is still two integers per row.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from pretrax.config import Config
from pretrax.data.corpus import Corpus, heldout_bucket
from pretrax.data.objectives import FEATURES, OBJECTIVES, causal_lm, make_objective, objective_features  # noqa: F401
from pretrax.data.objectives import ConcatExamples, check_sentinels_fit, document_stage
from pretrax.data.packing import RowPacker
from pretrax.data.pair_packing import PairPacker
from pretrax.data.tokenizer import config_tokenizer
from pretrax.data.workers import ParallelDocuments, Strided
from pretrax.errors import ConfigError, DataError
from pretrax.models.family import family_of
from pretrax.sizes import model_vocab_size

STATE_VERSION = 1

# The objectives (causal_lm, prefix_lm, span_corruption, ul2) live in objectives.py; re-exported here.
WHOLE_EXAMPLES = ("prefix_lm", "span_corruption", "ul2")  # objectives whose examples are never split across rows


# ---------------------------------------------------------------- document datasets


def _seeds(seed: int) -> tuple[int, int]:
    """(shuffle seed, objective seed), both uint32, derived from the run seed.

    grain reshuffles epoch e with shuffle_seed + e; hashing the run seed first
    keeps run seed s+1 from replaying run seed s's epoch orders shifted by one.
    """
    a, b = np.random.SeedSequence(seed & (2**64 - 1)).generate_state(2)
    return int(a), int(b)


def _tokenize(tokenizer, document: str | np.ndarray) -> np.ndarray:
    """bos + ids + eos: bos lets the model predict a document's first token (and start a sample).

    A document is text, or its ids already encoded by this tokenizer (a pre-tokenized source; no bos/eos).
    """
    tokens = np.asarray(tokenizer.encode(document) if isinstance(document, str) else document, np.int32)
    return np.concatenate([[tokenizer.bos_id], tokens, [tokenizer.eos_id]]).astype(np.int32)


def document_dataset(corpus: Corpus | Sequence[Corpus], tokenizer, objective: str | Callable, *, seed: int,
                     shuffle: bool, repeat: bool, weights: Sequence[float] | None = None,
                     data=None) -> grain.MapDataset:
    """Per-document feature dicts, lazily, by index (endless when repeat).

    Several corpora are mixed by weight (grain's deterministic mix of endless,
    separately shuffled streams) when repeating, or read one after another
    (held-out eval) when not. ``objective`` is a name (built with ``data``, a
    DataSection, for its denoisers and seq_len; defaults otherwise) or an
    already built (tokens, rng) function.
    """
    if isinstance(objective, str):
        from pretrax.config import DataSection

        data = _with_objective(data or DataSection(), objective)
        objective = make_objective(data, tokenizer)
    corpora = [corpus] if isinstance(corpus, Corpus) else list(corpus)
    shuffle_seed, objective_seed = _seeds(seed)
    parts = []
    for i, c in enumerate(corpora):
        ds = grain.MapDataset.source(c)
        if shuffle:  # index g in epoch g // N uses seed + epoch; each source its own seed
            ds = ds.shuffle(seed=(shuffle_seed + 7919 * i) % 2**32)
        parts.append(ds.repeat() if repeat else ds)
    if len(parts) == 1:
        ds = parts[0]
    elif repeat:
        ds = grain.MapDataset.mix(parts, list(weights) if weights is not None else None)
    else:
        ds = grain.MapDataset.concatenate(parts)
    ds = ds.map(functools.partial(_tokenize, tokenizer))
    return ds.random_map(objective, seed=objective_seed)  # rng from (objective_seed, g)


def _with_objective(data, objective: str):
    import dataclasses

    return dataclasses.replace(data, objective=objective)


def is_encoder_decoder(cfg: Config) -> bool:
    """Whether the model family reads rows in (encoder, decoder) pairs (then pairs are packed)."""
    return family_of(cfg.model).has_encoder


def objective_for(cfg: Config, tokenizer):
    """The run's objective function, in the layout its model kind reads; its sentinels must fit the model's vocabulary."""
    objective = make_objective(cfg.data, tokenizer, encoder_decoder=is_encoder_decoder(cfg))
    if any(d.kind == "span" for d in getattr(objective, "denoisers", ())):
        check_sentinels_fit(cfg.data, tokenizer, model_vocab_size(cfg, tokenizer.vocab_size))
    return objective


def make_packer(cfg: Config, docs, *, finite: bool, row: int = 0, objective=None) -> RowPacker | PairPacker:
    """One row's packer: a RowPacker of seq_len, or for the encoder-decoder a PairPacker of (inputs_len, targets_len).

    With an objective that cuts concatenated documents (data.concat_documents) the packer reads the
    examples of row ``row`` (ConcatExamples) from ``docs``, that row's documents.
    """
    if getattr(objective, "concat", False):
        docs = ConcatExamples(docs, objective, seed=_seeds(cfg.run.seed)[1], row=row, finite=finite)
    features = objective_features(cfg.data.objective, is_encoder_decoder(cfg))
    if is_encoder_decoder(cfg):
        return PairPacker(docs, *family_of(cfg.model).row_lengths(cfg.data), features, finite=finite)
    return RowPacker(docs, cfg.data.seq_len, features, finite=finite,
                     whole_examples=cfg.data.objective in WHOLE_EXAMPLES)


def _objective_meta(cfg: Config) -> dict[str, Any]:
    """State metadata: the objective, and for denoising ones a checksum of what shapes its examples."""
    meta: dict[str, Any] = {"objective": cfg.data.objective}
    if is_encoder_decoder(cfg):
        meta["layout"] = family_of(cfg.model).name  # packer offsets count examples, not tokens
    if cfg.data.objective != "causal_lm":
        shape = (cfg.data.denoisers, cfg.data.seq_len, cfg.data.num_sentinels, cfg.data.concat_documents)
        if is_encoder_decoder(cfg):
            shape += family_of(cfg.model).row_lengths(cfg.data)
        meta["objective_spec"] = zlib.crc32(repr(shape).encode())
    return meta


# ---------------------------------------------------------------- batches


class BatchIterator:
    """This host's rows of every global batch: one RowPacker per row.

    State (JSON-serialisable; all integers but the objective name)::

        {"version": 1, "seed": 0, "corpus": <crc32 of the document names>,
         "objective": "causal_lm", "global_batch": B, "first_row": r0,
         "doc": [k, ...], "offset": [o, ...]}   # one entry per row r0, r0+1, ...

    ``set_state`` accepts any state whose rows cover this iterator's rows: its
    own, or a merged global one (``merge_states``) when the host count changed.
    """

    def __init__(self, packers: list[RowPacker] | list[PairPacker], *, first_row: int, meta: Mapping[str, Any],
                 on_close=None):
        if not packers:
            raise ConfigError("a batch needs at least one row")
        self._on_close = on_close  # e.g. shutting down document worker processes
        self._packers = packers
        self._first_row = first_row
        self._meta = dict(meta)
        self._template = packers[0].new_row()  # each feature's row length and dtype

    def __iter__(self) -> "BatchIterator":
        return self

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __next__(self) -> dict[str, np.ndarray]:
        batch = {k: np.zeros((len(self._packers),) + v.shape, v.dtype) for k, v in self._template.items()}  # (B, T)
        for i, packer in enumerate(self._packers):
            packer.fill({k: v[i] for k, v in batch.items()})
        return batch

    def get_state(self) -> dict[str, Any]:
        doc, offset = zip(*(p.get_state() for p in self._packers))
        return {"version": STATE_VERSION, **self._meta, "first_row": self._first_row,
                "doc": list(doc), "offset": list(offset)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        _check_meta(state, self._meta)
        lo = self._first_row - int(state["first_row"])
        if lo < 0 or lo + len(self._packers) > len(state["doc"]) or len(state["doc"]) != len(state["offset"]):
            raise DataError(
                f"iterator state covers rows {state['first_row']}..{state['first_row'] + len(state['doc']) - 1}, "
                f"this host needs rows {self._first_row}..{self._first_row + len(self._packers) - 1}; "
                "merge all hosts' states with pretrax.data.merge_states"
            )
        for i, packer in enumerate(self._packers):
            packer.set_state(state["doc"][lo + i], state["offset"][lo + i])


def _check_meta(state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
        raise DataError(f"data iterator state has version {state.get('version') if isinstance(state, Mapping) else state!r}, "
                        f"expected {STATE_VERSION}")
    for key, value in meta.items():
        if state.get(key) != value:
            raise DataError(
                f"data iterator state was saved with {key}={state.get(key)!r} but this run has {key}={value!r}; "
                "resuming would not give the same batches (same corpus, seed, objective and train.batch_size needed)"
            )


def merge_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One global state from every host's state (any order): resumable on any host count."""
    if not states:
        raise DataError("no iterator states to merge")
    states = sorted(states, key=lambda s: int(s["first_row"]))
    meta = {k: v for k, v in states[0].items() if k not in ("first_row", "doc", "offset", "version")}
    merged = {"version": STATE_VERSION, **meta, "first_row": int(states[0]["first_row"]), "doc": [], "offset": []}
    for s in states:
        _check_meta(s, meta)
        if int(s["first_row"]) != merged["first_row"] + len(merged["doc"]):
            raise DataError(f"iterator states do not cover contiguous rows (gap before row {s['first_row']})")
        merged["doc"] += list(s["doc"])
        merged["offset"] += list(s["offset"])
    return merged


def _split(cfg: Config) -> tuple[list[Corpus], list[Corpus]]:
    """(train corpora, held-out corpora), one of each per source."""
    from pretrax.data.sources import load_source

    pairs = [load_source(src, cfg.data.heldout_percent, cfg.data.tokenizer) for src in cfg.data.sources]
    return [t for t, _ in pairs], [h for _, h in pairs]


def _fingerprint(corpora: Sequence[Corpus], weights: Sequence[float]) -> int:
    if len(corpora) == 1:
        return corpora[0].fingerprint
    text = ";".join(f"{c.fingerprint}:{w:g}" for c, w in zip(corpora, weights))
    return zlib.crc32(text.encode())


def make_train_iterator(cfg: Config, *, process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """Endless training batches: this host's train.batch_size // process_count rows of each global batch."""
    batch = cfg.train.batch_size
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if batch % process_count:
        raise ConfigError(f"train.batch_size ({batch}) must be divisible by the number of hosts ({process_count})")
    docs, fingerprint = train_documents(cfg)
    if cfg.data.num_workers > 0:
        docs = ParallelDocuments(cfg, docs, build=train_documents, num_workers=cfg.data.num_workers, stride=batch)
    rows = batch // process_count
    first_row = process_index * rows
    objective = objective_for(cfg, config_tokenizer(cfg.data))
    packers = [make_packer(cfg, Strided(docs, r, batch), finite=False, row=r, objective=objective)
               for r in range(first_row, first_row + rows)]
    meta = {"seed": cfg.run.seed, "corpus": fingerprint, **_objective_meta(cfg), "global_batch": batch}
    return BatchIterator(packers, first_row=first_row, meta=meta,
                         on_close=docs.close if isinstance(docs, ParallelDocuments) else None)


def train_documents(cfg: Config) -> tuple[grain.MapDataset, int]:
    """The endless, shuffled, mixed training documents (features by global index) and their fingerprint."""
    train, _ = _split(cfg)
    weights = [src.weight for src in cfg.data.sources]
    for src, corpus in zip(cfg.data.sources, train):
        if len(corpus) == 0:
            raise DataError(f"no training documents in data source {_describe(src)} "
                            f"after holding out {cfg.data.heldout_percent}%")
    tokenizer = config_tokenizer(cfg.data)
    docs = document_dataset(train, tokenizer, document_stage(objective_for(cfg, tokenizer)),
                            seed=cfg.run.seed, shuffle=cfg.data.shuffle, repeat=True, weights=weights)
    return docs, _fingerprint(train, weights)


def check_splits(cfg: Config) -> None:
    """Refuse at start-up a split that would fail later: no training documents, or none held out to evaluate.

    Every run evaluates at its last step, so held-out documents are always needed. Text and jsonl
    documents are held out per document by a hash of their name (corpus.is_heldout), so a corpus of one
    document can never have both; this names the keys that fix it instead of failing after training.
    """
    train, heldout = _split(cfg)
    pct = f"data.heldout_percent={cfg.data.heldout_percent:g}"
    per_doc = "held-out documents are chosen per document by a hash of its name"
    for src, t, h in zip(cfg.data.sources, train, heldout):
        if len(t) == 0:
            n = len(h)
            fix = f"so a run needs at least 2: {_too_few(src)}" if n < 2 else "lower data.heldout_percent"
            raise DataError(f"no training documents: {pct} holds out all {n} document(s) of data source "
                            f"{_describe(src)}; {per_doc}, {fix}")
    if sum(len(h) for h in heldout):
        return
    what = f"no held-out documents to evaluate on (a run evaluates at its last step): {pct} holds out none of"
    counted = [(src, t) for src, t in zip(cfg.data.sources, train) if src.source != "tfds"]
    if not counted:  # tfds: a share of each 10,000 records, or a split of its own
        raise DataError(f"{what} {', '.join(map(_describe, cfg.data.sources))}; "
                        "raise data.heldout_percent or set data.tfds_eval_split to a split of its own")
    n = sum(len(t) for _, t in counted)
    names = ", ".join(_describe(s) for s, _ in counted)
    needed = _smallest_heldout_percent([t for _, t in counted])
    if needed is None:
        smallest = min(counted, key=lambda st: len(st[1]))
        where = f" (in {_describe(smallest[0])})" if len(counted) > 1 else ""
        raise DataError(f"{what} the {n} document(s) of {names}; {per_doc}, so a run needs at least 2{where}: "
                        f"{_too_few(smallest[0])}")
    raise DataError(f"{what} the {n} documents of {names}, and {per_doc}; "
                    f"data.heldout_percent={needed:g} holds out at least one")


def _smallest_heldout_percent(corpora: Sequence[Corpus]) -> float | None:
    """The least data.heldout_percent that holds out a document and leaves every corpus one to train on."""
    buckets = [[heldout_bucket(n) for n in c.names] for c in corpora]
    first = min(min(b) for b in buckets if b) + 1  # is_heldout: bucket < round(percent * 100)
    if first >= 10_000 or any(all(x < first for x in b) for b in buckets):
        return None
    return first / 100


def _too_few(src) -> str:
    """How to get more documents out of this source."""
    if src.source == "text" and src.text_split == "file":
        return ("add files to data.paths, or set data.text_split=blank_lines to make each blank-line-separated "
                "block a document")
    if src.source == "tfds":
        return "set data.tfds_eval_split to a split of its own"
    return "add documents to data.paths"


def eval_batches(cfg: Config, num_batches: int, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """This host's rows of global held-out batches; the same list on every call.

    batch_size is the GLOBAL batch; rows are split across hosts as in training,
    so every held-out row is evaluated exactly once over all hosts. Held-out
    documents come from every source, one source after another, in corpus
    order. Each is read once at most (no repeat): rows whose stream has run
    out are padding (loss_mask 0), so a small held-out set never counts twice.
    """
    _, heldout = _split(cfg)
    if sum(len(h) for h in heldout) == 0:
        raise DataError(
            f"no held-out documents (data.heldout_percent={cfg.data.heldout_percent}); "
            "raise data.heldout_percent (or set data.tfds_eval_split) to evaluate"
        )
    heldout = [h for h in heldout if len(h)]
    tokenizer = config_tokenizer(cfg.data)
    objective = objective_for(cfg, tokenizer)
    docs = document_dataset(heldout, tokenizer, document_stage(objective), seed=cfg.run.seed, shuffle=False,
                            repeat=False)
    rows = batch_size // process_count
    first = process_index * rows
    packers = [make_packer(cfg, docs[r::batch_size], finite=True, row=r, objective=objective)
               for r in range(first, first + rows)]
    it = BatchIterator(packers, first_row=first, meta={})
    return [next(it) for _ in range(num_batches)]


def _describe(src) -> str:
    if src.source == "tfds":
        return f"tfds:{src.tfds_name}"
    if src.source in ("text", "jsonl"):
        return f"{src.source}:{','.join(src.paths)}"
    return src.source

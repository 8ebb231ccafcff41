"""Corpora for every data source: stdlib, local text / JSON-lines files, and tfds.

``load_source(src, heldout_percent, tokenizer) -> (train, heldout)`` is the one
entry point. Every corpus it returns supports ``len()``, ``corpus[i] -> str``
(or token ids, below),
``fingerprint`` and pickling (what ``grain.MapDataset.source`` and worker
processes need).

* ``text`` / ``jsonl``: the files are scanned once at start-up into an index
  of (file, byte offset, byte length) per document; a document's bytes are read
  on demand. Bad records (malformed JSON, a missing or non-string text field,
  empty documents) are left out of the index and counted; invalid UTF-8 bytes
  are replaced with U+FFFD and counted. One warning line per file summarises
  them. Documents are named ``path`` (text, one per file), ``path#k`` (text,
  k-th blank-line block, from 0) or ``path#n`` (jsonl, line number n, from 1);
  the held-out split hashes these names (``corpus.is_heldout``), so a document
  stays on its side when others are added.
* ``tfds``: ``tfds.builder(name, data_dir=...)`` and ``as_data_source(split)``
  (random access over ArrayRecord; what ``tfds.data_source(..., download=False)``
  does). The held-out set is ``tfds_eval_split`` when given, else a fixed
  ``heldout_percent`` share of every 10,000 consecutive records of
  ``tfds_split``, chosen by a hash of the record's position in its block: O(1)
  memory and O(1) random access, even for billions of records.
  Pre-tokenized datasets (``pretrax data prepare --tokenizer``): when the
  dataset's stored tokenizer fingerprint equals ``data.tokenizer``'s, the
  corpus yields the stored ids (``np.int32`` arrays, no bos/eos) instead of the
  text; the pipeline's ``_tokenize`` takes either, so batches are identical.
  On a mismatch it logs one line and yields the text.

All bad input is reported at start-up as a one-line ``DataError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import json
import logging
import os
import re
import zlib
from typing import Any, Iterable, Sequence

import numpy as np

from pretrax.config import SourceSection
from pretrax.data.corpus import Corpus, is_heldout, split, stdlib_corpus
from pretrax.errors import DataError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_GLOB_CHARS = re.compile(r"[*?\[]")


# ---------------------------------------------------------------- files and globs


def expand_paths(patterns: Sequence[str], what: str) -> list[str]:
    """Files named by paths or globs: sorted, deduplicated; DataError for anything that names no file."""
    if not patterns:
        raise DataError(f"{what} source needs data.paths: a list of files or globs, e.g. ['data/*.txt']")
    files: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _GLOB_CHARS.search(pattern):
            matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matched:
                raise DataError(f"{what} source: glob {pattern!r} matches no files")
            files.update(os.path.normpath(p) for p in matched)
        elif os.path.isdir(pattern):
            raise DataError(f"{what} source: {pattern!r} is a directory; name files or a glob such as "
                            f"{os.path.join(pattern, '*.txt')!r}")
        elif not os.path.isfile(pattern):
            raise DataError(f"{what} source: file {pattern!r} does not exist (give existing files or globs)")
        else:
            files.add(os.path.normpath(pattern))
    for path in files:
        if not os.access(path, os.R_OK):
            raise DataError(f"{what} source: file {path!r} is not readable")
    return sorted(files)


# ---------------------------------------------------------------- the file index


@dataclasses.dataclass
class FileStats:
    """What a scan left out or repaired, per file (and summed over files with ``+``)."""

    documents: int = 0
    empty: int = 0  # documents with no non-whitespace text: skipped
    malformed: int = 0  # jsonl lines that are not a JSON object: skipped
    missing_field: int = 0  # jsonl objects without the text field: skipped
    not_string: int = 0  # jsonl objects whose text field is not a string: skipped
    invalid_utf8: int = 0  # kept documents whose invalid UTF-8 was replaced with U+FFFD

    def __add__(self, other: "FileStats") -> "FileStats":
        return FileStats(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def skipped(self) -> int:
        return self.empty + self.malformed + self.missing_field + self.not_string


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _log_stats(kind: str, path: str, stats: FileStats, field: str) -> None:
    parts = []
    if stats.malformed:
        parts.append(f"{_plural(stats.malformed, 'malformed line')}")
    if stats.missing_field:
        parts.append(f"{_plural(stats.missing_field, 'line')} without a {field!r} field")
    if stats.not_string:
        parts.append(f"{_plural(stats.not_string, 'line')} whose {field!r} is not a string")
    if stats.empty:
        parts.append(f"{_plural(stats.empty, 'empty document')}")
    if parts:
        log.warning("%s: %s skipped in %s", kind, ", ".join(parts), path)
    if stats.invalid_utf8:
        log.warning("%s: %s with invalid UTF-8 in %s (bytes replaced with U+FFFD)", kind,
                    _plural(stats.invalid_utf8, "document"), path)


def _decode(data: bytes) -> tuple[str, bool]:
    """(text, had invalid UTF-8)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _clean(text: str) -> tuple[str, bool]:
    """Replace lone surrogates (JSON escapes like "\\udc80") that could not be encoded later."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8"), True


def _strip_newline(line: bytes) -> bytes:
    return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line


def _jsonl_text(line: bytes, field: str) -> tuple[str | None, str, bool]:
    """(text or None, why it was rejected, had invalid UTF-8) for one JSON line."""
    raw, bad = _decode(line)
    try:
        obj = json.loads(raw)
    except ValueError:
        return None, "malformed", bad
    if not isinstance(obj, dict):
        return None, "malformed", bad
    if field not in obj:
        return None, "missing_field", bad
    text = obj[field]
    if not isinstance(text, str):
        return None, "not_string", bad
    text, surrogates = _clean(text)
    return text, "", bad or surrogates


def _scan_text(path: str, text_split: str) -> tuple[list[tuple[int, int, int]], FileStats]:
    """[(ordinal, offset, length)] of the documents of one text file."""
    stats, docs = FileStats(), []
    if text_split == "file":
        with open(path, "rb") as f:
            data = f.read()
        text, bad = _decode(data)
        if text.strip():
            docs.append((0, 0, len(data)))
            stats.invalid_utf8 += bad
        else:
            stats.empty += 1
        return docs, stats

    block: list[bytes] = []
    start = pos = 0

    def close_block() -> None:
        data = b"".join(block)
        data = _strip_newline(data)
        _, bad = _decode(data)
        docs.append((len(docs), start, len(data)))
        stats.invalid_utf8 += bad

    with open(path, "rb") as f:
        for line in f:
            if line.strip():  # bytes.strip: ASCII whitespace, so a line of spaces is blank
                if not block:
                    start = pos
                block.append(line)
            elif block:
                close_block()
                block = []
            pos += len(line)
    if block:
        close_block()
    return docs, stats


def _scan_jsonl(path: str, field: str) -> tuple[list[tuple[int, int, int]], FileStats]:
    stats, docs = FileStats(), []
    pos = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            content = _strip_newline(line)
            if content.strip():  # blank lines (e.g. a trailing one) are not records
                text, why, bad = _jsonl_text(content, field)
                if text is None:
                    setattr(stats, why, getattr(stats, why) + 1)
                elif not text.strip():
                    stats.empty += 1
                else:
                    docs.append((lineno, pos, len(content)))
                    stats.invalid_utf8 += bad
            pos += len(line)
    return docs, stats


class FileCorpus(Corpus):
    """Documents of local text / jsonl files, located by an index built at start-up and read lazily.

    Per document: which file, the byte offset and length, and an ordinal for its
    name (block number for text, line number for jsonl). Numpy arrays keep the
    index small and the corpus cheap to pickle.
    """

    def __init__(self, files: Sequence[str], jsonl: Sequence[bool], text_split: str, text_field: str,
                 file_idx: np.ndarray, ordinal: np.ndarray, offset: np.ndarray, length: np.ndarray,
                 stats: FileStats | None = None):
        self.files = tuple(files)
        self.jsonl = tuple(bool(j) for j in jsonl)
        self.text_split = text_split
        self.text_field = text_field
        self.file_idx = np.asarray(file_idx, np.int32)
        self.ordinal = np.asarray(ordinal, np.int64)
        self.offset = np.asarray(offset, np.int64)
        self.length = np.asarray(length, np.int64)
        self.stats = stats or FileStats()

    @classmethod
    def scan(cls, files: Sequence[str], jsonl: Sequence[bool], *, text_split: str = "file",
             text_field: str = "text") -> "FileCorpus":
        """Index the documents of these files; bad records are skipped, counted and logged per file."""
        if text_split not in ("file", "blank_lines"):
            raise DataError(f"data.text_split {text_split!r} is not valid; valid choices: file, blank_lines")
        cols: list[list[int]] = [[], [], [], []]
        total = FileStats()
        for i, (path, is_jsonl) in enumerate(zip(files, jsonl)):
            try:
                docs, stats = _scan_jsonl(path, text_field) if is_jsonl else _scan_text(path, text_split)
            except OSError as e:
                raise DataError(f"cannot read {path!r}: {e.strerror or e}") from None
            stats.documents = len(docs)
            _log_stats("jsonl" if is_jsonl else "text", path, stats, text_field)
            total = total + stats
            for ordinal, offset, length in docs:
                cols[0].append(i)
                cols[1].append(ordinal)
                cols[2].append(offset)
                cols[3].append(length)
        return cls(files, jsonl, text_split, text_field, *map(np.asarray, cols), stats=total)

    def __len__(self) -> int:
        return len(self.file_idx)

    def name(self, index: int) -> str:
        f = int(self.file_idx[index])
        if not self.jsonl[f] and self.text_split == "file":
            return self.files[f]
        return f"{self.files[f]}#{int(self.ordinal[index])}"

    @property
    def names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.name(i) for i in range(len(self)))

    def __getitem__(self, index: int) -> str:
        f = int(self.file_idx[index])
        try:
            with open(self.files[f], "rb") as fh:
                fh.seek(int(self.offset[index]))
                data = fh.read(int(self.length[index]))
        except OSError:
            return ""  # a file gone mid-run: an empty document, which the packer skips
        if not self.jsonl[f]:
            return data.decode("utf-8", errors="replace")
        text, _, _ = _jsonl_text(data, self.text_field)
        return text or ""

    def take(self, indices: Sequence[int]) -> "FileCorpus":
        idx = np.asarray(indices, np.int64)
        return FileCorpus(self.files, self.jsonl, self.text_split, self.text_field, self.file_idx[idx],
                          self.ordinal[idx], self.offset[idx], self.length[idx], self.stats)

    def subset(self, names: Sequence[str]) -> "FileCorpus":
        position = {n: i for i, n in enumerate(self.names)}
        return self.take([position[n] for n in names])


def is_jsonl_path(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def file_corpus(src: SourceSection) -> FileCorpus:
    """All documents of a text or jsonl source (before the held-out split)."""
    files = expand_paths(src.paths, src.source)
    corpus = FileCorpus.scan(files, [src.source == "jsonl"] * len(files), text_split=src.text_split,
                             text_field=src.text_field)
    _require_documents(corpus, src.source, f"{len(files)} file(s) from {list(src.paths)}")
    return corpus


def _require_documents(corpus: FileCorpus, what: str, where: str) -> None:
    if len(corpus) == 0:
        s = corpus.stats
        raise DataError(
            f"{what} source has no documents: {where} gave none "
            f"({s.empty} empty, {s.malformed} malformed, {s.missing_field} without the text field, "
            f"{s.not_string} with a non-string text field)"
        )


# ---------------------------------------------------------------- tfds

HELDOUT_PERIOD = 10_000  # the tfds hash split repeats every this many records
TOKENS_FEATURE = "tokens"  # pre-tokenized ids (no bos/eos) written by `pretrax data prepare --tokenizer`
TOKENS_INFO = "pretrax_tokens.json"  # in the version dir: {"feature", "text_field", "tokenizer", "tokenizer_name"}


@functools.lru_cache(maxsize=64)
def _heldout_offsets(heldout_percent: float) -> np.ndarray:
    """The sorted offsets in 0..PERIOD-1 held out: the round(percent * 100) with the smallest hash."""
    count = min(HELDOUT_PERIOD, max(0, round(heldout_percent * 100)))
    keys = np.array([zlib.crc32(str(o).encode()) for o in range(HELDOUT_PERIOD)], np.uint64)
    order = np.argsort(keys * HELDOUT_PERIOD + np.arange(HELDOUT_PERIOD, dtype=np.uint64), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def _side_offsets(heldout_percent: float, heldout: bool) -> np.ndarray:
    held = _heldout_offsets(heldout_percent)
    if heldout:
        return held
    mask = np.ones(HELDOUT_PERIOD, bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64)


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise DataError(f"the tfds source needs tensorflow-datasets ({e})") from None
    return tfds


def _is_remote(path: str) -> bool:
    return "://" in path


def _prepared_here(data_dir: str) -> list[str]:
    """Names of the datasets prepared under a local data_dir (name or name/config), for error messages."""
    found = []
    if not data_dir or _is_remote(data_dir) or not os.path.isdir(data_dir):
        return found
    for info in glob.glob(os.path.join(data_dir, "**", "dataset_info.json"), recursive=True):
        parts = os.path.relpath(os.path.dirname(os.path.dirname(info)), data_dir).split(os.sep)
        if parts and parts[0] not in (".", "downloads") and not parts[0].startswith("."):
            found.append("/".join(parts))
    return sorted(set(found))


def _open_builder(name: str, data_dir: str):
    tfds = _tfds()
    where = f"data_dir {data_dir!r}" if data_dir else "the default data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
    if data_dir and not _is_remote(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"tfds data_dir {data_dir!r} does not exist; give the directory the dataset was prepared in")
    kwargs = {"data_dir": data_dir} if data_dir else {}
    try:
        builder = tfds.builder(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        prepared = _prepared_here(data_dir)
        try:
            known = tfds.list_builders(with_community_datasets=False)
        except Exception:  # noqa: BLE001 - only for the hint
            known = []
        close = difflib.get_close_matches(name.split(":")[0], prepared + list(known), n=4, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        here = f"; prepared there: {', '.join(prepared[:8])}" if prepared else ""
        raise DataError(
            f"unknown tfds dataset {name!r}: nothing prepared for it in {where}{here}{hint}; prepare it there first "
            f"(`tfds build NAME --data_dir DIR` for a tfds catalog dataset, or "
            f"`pretrax data prepare FILES... --name NAME --data-dir DIR` for local files)"
        ) from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; one line is what the user needs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot open tfds dataset {name!r} in {where}: {first}") from None
    if not builder.is_prepared():
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {where} (no dataset_info.json under {str(builder.data_dir)!r}); "
            f"build it there first (`tfds build {name.split(':')[0]} --data_dir DIR`, "
            f"or `pretrax data prepare` for local files)"
        )
    return builder


def _base_split(split_name: str) -> str:
    return re.split(r"[\[+]", split_name, maxsplit=1)[0].strip()


class TfdsCorpus(Corpus):
    """Random access over one split of a prepared tfds dataset (ArrayRecord), optionally a hash-chosen part of it.

    ``tokens_field`` set: documents are that feature's stored token ids
    (np.int32), not text. ``side`` is None for the whole split, else "train" / "heldout" of a
    ``heldout_percent`` split: record ``block * PERIOD + offsets[r]``. The data
    source is opened on first read (and again after unpickling, in a worker).
    """

    def __init__(self, name: str, split: str, data_dir: str, text_field: str, total: int, *,
                 version: str = "", side: str | None = None, heldout_percent: float = 0.0,
                 tokens_field: str | None = None):
        self.tfds_name, self.split, self.data_dir, self.text_field = name, split, data_dir, text_field
        self.tokens_field = tokens_field  # read these stored ids instead of the text (their tokenizer matched)
        self.total, self.version, self.side, self.heldout_percent = total, version, side, heldout_percent
        self._offsets = None if side is None else _side_offsets(heldout_percent, side == "heldout")
        self._source = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        if self._offsets is None:
            return self.total
        blocks, tail = divmod(self.total, HELDOUT_PERIOD)
        m = len(self._offsets)
        return blocks * m + int(np.searchsorted(self._offsets, tail))

    def record_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"document {index} out of range for {n} documents")
        if self._offsets is None:
            return index
        block, r = divmod(index, len(self._offsets))
        return block * HELDOUT_PERIOD + int(self._offsets[r])

    def _data_source(self):
        if self._source is None:
            self._source = _open_builder(self.tfds_name, self.data_dir).as_data_source(split=self.split)
        return self._source

    def __getitem__(self, index: int) -> str | np.ndarray:
        return self.read_record(self.record_index(int(index)))

    @property
    def names(self) -> Sequence[str]:  # type: ignore[override]
        return _RecordNames(self)

    def read_record(self, record: int) -> str | np.ndarray:
        example = self._data_source()[record]
        if self.tokens_field:
            return np.asarray(example[self.tokens_field], np.int32)
        return to_text(example[self.text_field])

    def take(self, indices: Sequence[int]) -> Corpus:
        return Corpus([self.names[i] for i in indices], _RecordReader(self))

    @property
    def fingerprint(self) -> int:
        key = (f"tfds:{self.tfds_name}:{self.version}:{self.split}:{self.total}:"
               f"{self.side}:{self.heldout_percent}:{self.text_field}")
        return zlib.crc32(key.encode("utf-8"))


class _RecordReader:
    """Picklable ``read(name)`` for a subset of a TfdsCorpus: the record index is after the '#'."""

    def __init__(self, corpus: TfdsCorpus):
        self.corpus = corpus

    def __call__(self, name: str) -> str | np.ndarray:
        return self.corpus.read_record(int(name.rsplit("#", 1)[1]))


class _RecordNames(Sequence[str]):
    """Lazy document names "name/split#record" (a tfds split may hold billions)."""

    def __init__(self, corpus: TfdsCorpus):
        self._corpus = corpus

    def __len__(self) -> int:
        return len(self._corpus)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        c = self._corpus
        return f"{c.tfds_name}/{c.split}#{c.record_index(index)}"


def to_text(value: Any) -> str:
    """A tfds text feature value as str: bytes decoded as UTF-8 (invalid bytes replaced), str as is."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return str(value)
    raise DataError(f"tfds text field holds {type(value).__name__}, not text; choose a Text feature as text_field")


def _check_split(builder, name: str, split_name: str) -> int:
    splits = builder.info.splits
    base = _base_split(split_name)
    if base not in splits:
        raise DataError(f"tfds dataset {name!r} has no split {split_name!r}; valid splits: {', '.join(sorted(splits))}")
    try:
        return int(splits[split_name].num_examples)
    except Exception as e:  # noqa: BLE001 - bad slice syntax etc.
        raise DataError(f"tfds dataset {name!r}: split {split_name!r} is not valid: {e}") from None


def stored_tokenizer(builder) -> dict[str, Any] | None:
    """The TOKENS_INFO record of a pre-tokenized dataset (read from its version dir), or None."""
    path = builder.data_path / TOKENS_INFO
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as e:
        log.warning("tfds dataset %s: cannot read %s (%s); reading its text", builder.name, path, e)
        return None


def _tokens_field(builder, name: str, src: SourceSection, tokenizer: str | None) -> str | None:
    """The feature of stored ids to read instead of the text, if they come from ``tokenizer``; else None."""
    info = stored_tokenizer(builder)
    if not info or tokenizer is None or info.get("text_field", "text") != src.text_field:
        return None
    from pretrax.data.tokenizer import load_tokenizer

    wanted = load_tokenizer(tokenizer).fingerprint
    if info.get("tokenizer") != wanted or info.get("feature") not in builder.info.features.keys():
        log.info("tfds dataset %s: stored token ids are from tokenizer %s, not data.tokenizer %s (%s); "
                 "tokenizing its text on the fly", name, info.get("tokenizer"), tokenizer, wanted)
        return None
    return info["feature"]


def tfds_corpora(src: SourceSection, heldout_percent: float,
                 tokenizer: str | None = None) -> tuple[TfdsCorpus, TfdsCorpus]:
    if not src.tfds_name:
        raise DataError("tfds source needs data.tfds_name, e.g. 'c4/en:3.0.1' or the --name given to `pretrax data prepare`")
    name, data_dir = src.tfds_name, src.data_dir
    builder = _open_builder(name, data_dir)
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    if src.text_field not in keys:
        raise DataError(f"tfds dataset {name!r} has no feature {src.text_field!r}; its features: {', '.join(keys)}")
    version = str(builder.info.version)
    total = _check_split(builder, name, src.tfds_split)
    common = dict(version=version, tokens_field=_tokens_field(builder, name, src, tokenizer))
    if src.tfds_eval_split:
        eval_total = _check_split(builder, name, src.tfds_eval_split)
        train = TfdsCorpus(name, src.tfds_split, data_dir, src.text_field, total, **common)
        heldout = TfdsCorpus(name, src.tfds_eval_split, data_dir, src.text_field, eval_total, **common)
    else:
        train = TfdsCorpus(name, src.tfds_split, data_dir, src.text_field, total, side="train",
                           heldout_percent=heldout_percent, **common)
        heldout = TfdsCorpus(name, src.tfds_split, data_dir, src.text_field, total, side="heldout",
                             heldout_percent=heldout_percent, **common)
    if len(train) == 0:
        raise DataError(f"tfds dataset {name!r} split {src.tfds_split!r} has no documents"
                        + (f" left after holding out {heldout_percent}%" if total else ""))
    opened = {}
    for c in (train, heldout):  # open now, so a dataset tfds cannot serve fails at start-up, not mid-run
        if c.split not in opened:
            try:
                opened[c.split] = builder.as_data_source(split=c.split)
            except Exception as e:  # noqa: BLE001 - e.g. prepared as tfrecord, which has no random access
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise DataError(f"cannot read tfds dataset {name!r} split {c.split!r} by index "
                                f"(ArrayRecord needed; re-prepare with file_format=array_record): {first}") from None
        c._source = opened[c.split]
    return train, heldout


# ---------------------------------------------------------------- the entry point


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

"""Local text and JSON-lines files as random-access corpora.

The files are scanned once at start-up into an index of (file, byte offset,
byte length) per document; a document's bytes are read on demand. Bad records
(malformed JSON, a missing or non-string text field, empty documents) are left
out of the index and counted; invalid UTF-8 bytes are replaced with U+FFFD and
counted. One warning line per file summarises them. Documents are named
``key`` (text, one per file), ``key#k`` (text, k-th blank-line block, from 0)
or ``key#n`` (jsonl, line number n, from 1), where a file's key is its path
relative to the folder its pattern names (``document_keys``): the held-out
split hashes these names (``corpus.is_heldout``) and a saved iterator state
holds their fingerprint, so a document stays on its side when others are added,
and the split and a resume do not depend on the working directory or on where
the data is mounted. A text document over PIECE_BYTES is indexed as consecutive pieces that
share its name (so all stay on one side of the split) and are read one at a
time: memory does not grow with a document's size. Bad input is reported at
start-up as a one-line ``DataError``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import logging
import os
import re
from typing import Sequence

import numpy as np

from pretrax import storage
from pretrax.config import SourceSection
from pretrax.data.corpus import Corpus
from pretrax.errors import DataError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
# A text document longer than this is read as consecutive pieces of at most this many bytes, so memory
# stays bounded for a document of any size (one 200 MB line); the pieces keep the document's name. Each
# batch row holds its current document's ids, so a row holds at most one piece: 64 KiB of text, about
# 0.5 MB of ids, times the rows per host.
PIECE_BYTES = 1 << 16
CUT_WINDOW = 4096  # bytes before a cut searched for whitespace
READ_CHUNK = 1 << 20  # bytes read at a time while scanning
_GLOB_CHARS = re.compile(r"[*?\[]")


# ---------------------------------------------------------------- files and globs


def expand_paths(patterns: Sequence[str], what: str) -> list[str]:
    """Files named by paths or globs: sorted, deduplicated; DataError for anything that names no file."""
    return named_files(patterns, what)[0]


def named_files(patterns: Sequence[str], what: str) -> tuple[list[str], list[str]]:
    """(files, keys): expand_paths's files and, per file, its name in the corpus (``document_keys``)."""
    if not patterns:
        raise DataError(f"{what} source needs data.paths: a list of files or globs, e.g. ['data/*.txt']")
    roots: dict[str, str] = {}  # file -> the folder of the first pattern that names it
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if storage.is_remote(pattern):  # read by byte offset, document by document: a local disk's job
            raise DataError(f"{what} source: {pattern!r} is in object storage, and text and jsonl sources read "
                            "local files; copy them to a disk, or make a tfds dataset every host reads from the "
                            "bucket: pretrax data prepare LOCAL_FILES --name NAME --data-dir gs://BUCKET/tfds")
        match = _GLOB_CHARS.search(pattern)
        if match:
            matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matched:
                raise DataError(f"{what} source: glob {pattern!r} matches no files")
        elif os.path.isdir(pattern):
            raise DataError(f"{what} source: {pattern!r} is a directory; name files or a glob such as "
                            f"{os.path.join(pattern, '*.txt')!r}")
        elif not os.path.isfile(pattern):
            raise DataError(f"{what} source: file {pattern!r} does not exist (give existing files or globs)")
        else:
            matched = [pattern]
        root = os.path.dirname(pattern[: match.start()] if match else pattern)
        for path in matched:
            roots.setdefault(os.path.normpath(path), root)
    for path in roots:
        if not os.access(path, os.R_OK):
            raise DataError(f"{what} source: file {path!r} is not readable")
    files = sorted(roots)
    return files, document_keys(files, [roots[f] for f in files])


def document_keys(files: Sequence[str], roots: Sequence[str]) -> list[str]:
    """Each file's name in the corpus: its path relative to the folder its pattern names (``roots``).

    ``data/*.txt`` names ``data/a.txt`` "a.txt", from any working directory and wherever ``data`` is
    mounted, so held-out documents and a saved iterator state do not move with the data. Files whose
    keys collide (``a/x.txt`` and ``b/x.txt`` given by name) are named relative to the folder they
    share instead; absolute paths are the last resort.
    """
    paths = [os.path.abspath(f) for f in files]
    keys = [os.path.relpath(p, os.path.abspath(r)) for p, r in zip(paths, roots)]
    for key in [k for k, n in collections.Counter(keys).items() if n > 1]:
        same = [i for i, k in enumerate(keys) if k == key]
        shared = os.path.commonpath([os.path.dirname(paths[i]) for i in same])
        for i in same:
            keys[i] = os.path.relpath(paths[i], shared)
    return keys if len(set(keys)) == len(keys) else paths


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
    """[(ordinal, offset, length)] of the documents of one text file, read in bounded chunks.

    A file (or a line) of any size is never held whole: emptiness and invalid UTF-8
    are found chunk by chunk, block boundaries from line positions.
    """
    stats, docs = FileStats(), []
    if text_split == "file":
        size, has_text, bad = 0, False, False
        check = _Utf8Check()
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                size += len(chunk)
                has_text = has_text or bool(chunk.strip())
                bad = check.feed(chunk) or bad
        bad = check.finish() or bad
        if has_text:
            docs.append((0, 0, size))
            stats.invalid_utf8 += bad
        else:
            stats.empty += 1
        return docs, stats

    start = end = pos = 0  # the open block: [start, end) without the last line's newline
    in_block = line_has_text = bad = False
    line_start, check = 0, _Utf8Check()
    pending: list[bytes] = []  # the current line's parts, kept only while the line is still blank

    def close_block() -> None:
        nonlocal in_block, bad
        docs.append((len(docs), start, end - start))
        stats.invalid_utf8 += check.finish() or bad
        in_block, bad = False, False

    with open(path, "rb") as f:
        while part := f.readline(READ_CHUNK):  # a long line comes in parts of at most READ_CHUNK bytes
            if not line_has_text and part.strip():
                line_has_text = True
                if not in_block:
                    in_block, start, bad = True, line_start, False
                    check = _Utf8Check()
                for earlier in pending:
                    bad = check.feed(earlier) or bad
            if line_has_text:
                bad = check.feed(part) or bad
            else:
                pending.append(part)
            pos += len(part)
            if part.endswith(b"\n"):  # the line ends here
                if line_has_text:
                    end = pos - (2 if part.endswith(b"\r\n") else 1)
                elif in_block:  # a blank line closes the block
                    close_block()
                line_start, line_has_text, pending = pos, False, []
    if line_has_text:
        end = pos
    if in_block:
        close_block()
    return docs, stats


class _Utf8Check:
    """Whether a stream of byte chunks is valid UTF-8, fed chunk by chunk (a character may span two)."""

    def __init__(self):
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.bad = False

    def feed(self, chunk: bytes) -> bool:
        if not self.bad:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self.bad = True
        return self.bad

    def finish(self) -> bool:
        return self.feed(b"") or (not self.bad and self._final())

    def _final(self) -> bool:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            self.bad = True
        return self.bad


def _pieces(path: str, offset: int, length: int) -> list[tuple[int, int]]:
    """[(offset, length)] cutting one document into pieces of at most PIECE_BYTES.

    Each cut falls just after the last whitespace byte in the 4 KiB before it (else at a
    UTF-8 character start), so a piece never splits a character and rarely a word.
    """
    pieces, end = [], offset + length
    with open(path, "rb") as f:
        while end - offset > PIECE_BYTES:
            cut = offset + PIECE_BYTES
            f.seek(cut - CUT_WINDOW)
            window = f.read(CUT_WINDOW + 4)
            space = max(window.rfind(b, 0, CUT_WINDOW) for b in (b" ", b"\n", b"\t"))
            if space >= 0:
                cut = cut - CUT_WINDOW + space + 1
            else:
                back = 0
                while back < 3 and 0x80 <= window[CUT_WINDOW - back] < 0xC0:  # a continuation byte
                    back += 1
                cut -= back
            pieces.append((offset, cut - offset))
            offset = cut
    pieces.append((offset, end - offset))
    return pieces


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
    index small and the corpus cheap to pickle. ``keys`` name the files in
    document names (``document_keys``; the paths themselves when not given).
    """

    def __init__(self, files: Sequence[str], jsonl: Sequence[bool], text_split: str, text_field: str,
                 file_idx: np.ndarray, ordinal: np.ndarray, offset: np.ndarray, length: np.ndarray,
                 stats: FileStats | None = None, keys: Sequence[str] | None = None):
        self.files = tuple(files)
        self.keys = tuple(keys) if keys is not None else self.files
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
             text_field: str = "text", keys: Sequence[str] | None = None) -> "FileCorpus":
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
                for piece_offset, piece_length in ([(offset, length)] if is_jsonl else _pieces(path, offset, length)):
                    cols[0].append(i)
                    cols[1].append(ordinal)
                    cols[2].append(piece_offset)
                    cols[3].append(piece_length)
        return cls(files, jsonl, text_split, text_field, *map(np.asarray, cols), stats=total, keys=keys)

    def __len__(self) -> int:
        return len(self.file_idx)

    def name(self, index: int) -> str:
        f = int(self.file_idx[index])
        if not self.jsonl[f] and self.text_split == "file":
            return self.keys[f]
        return f"{self.keys[f]}#{int(self.ordinal[index])}"

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
                          self.ordinal[idx], self.offset[idx], self.length[idx], self.stats, self.keys)

    def subset(self, names: Sequence[str]) -> "FileCorpus":
        """The documents with these names, every piece of each, in corpus order."""
        wanted = set(names)
        return self.take([i for i, n in enumerate(self.names) if n in wanted])


def is_jsonl_path(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def file_corpus(src: SourceSection) -> FileCorpus:
    """All documents of a text or jsonl source (before the held-out split)."""
    files, keys = named_files(src.paths, src.source)
    corpus = FileCorpus.scan(files, [src.source == "jsonl"] * len(files), text_split=src.text_split,
                             text_field=src.text_field, keys=keys)
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

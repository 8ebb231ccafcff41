"""tfds datasets as random-access corpora (ArrayRecord through tfds data sources).

``tfds.builder(name, data_dir=...)`` and ``as_data_source(split)``: what
``tfds.data_source(..., download=False)`` does, and how ``c4/en`` and datasets
made by ``pretrax data prepare`` are read alike. The held-out set is the split
``tfds_eval_split`` names; with "auto" (the default) the dataset's ``validation``
split when it has one, so a prepared dataset evaluates on the split prepare
wrote and trains on all of ``train``. Otherwise ("", or no validation split) it
is a fixed ``heldout_percent`` share of every 10,000 consecutive records of
``tfds_split``, chosen by a hash of the record's position in its block: O(1)
memory and O(1) random access, even for billions of records. Pre-tokenized
datasets (``pretrax data prepare --tokenizer``): when the dataset's stored
tokenizer fingerprint equals ``data.tokenizer``'s, the corpus yields the stored
ids (``np.int32`` arrays, no bos/eos) instead of the text; on a mismatch it
logs one line and yields the text. Bad input is reported at start-up as a
one-line ``DataError``.
"""

from __future__ import annotations

import difflib
import functools
import glob
import json
import logging
import os
import re
import zlib
from typing import Any, Sequence

import numpy as np

from pretrax.config import SourceSection
from pretrax.data.corpus import Corpus
from pretrax.errors import DataError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- tfds

HELDOUT_PERIOD = 10_000  # the tfds hash split repeats every this many records
AUTO_EVAL_SPLIT = "validation"  # what data.tfds_eval_split=auto evaluates on when the dataset has it
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


def _mirrored(name: str, data_dir: str, builder):
    """The dataset of a gs:// data_dir, read from a local mirror (PRETRAX_CACHE_DIR).

    ArrayRecord's reader opens local files only (its GCS reader is not open source), so
    the prepared files are copied once per host; a later run finds them and copies nothing.
    A dataset larger than the local disk wants the bucket mounted (gcsfuse) and the mount's
    path as data.data_dir instead.
    """
    from pretrax import storage

    remote_version_dir = str(builder.data_dir).rstrip("/")
    relative = remote_version_dir[len(data_dir.rstrip("/")) + 1:]
    local_version_dir, copied, nbytes = storage.local_mirror(remote_version_dir)
    local_data_dir = local_version_dir[: len(local_version_dir) - len(relative)].rstrip(os.sep)
    if copied:
        log.warning("tfds dataset %s: copied %d file(s), %.1f MB, from %s to %s (ArrayRecord reads local files only)",
                    name, copied, nbytes / 1e6, remote_version_dir, local_version_dir)
    return local_data_dir, _open_builder(name, local_data_dir)


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


def eval_split(builder, src: SourceSection) -> str:
    """The split to evaluate on, or "" to hold out heldout_percent of tfds_split.

    "auto" takes the dataset's validation split unless there is none or training reads it.
    """
    if src.tfds_eval_split != "auto":
        return src.tfds_eval_split
    if AUTO_EVAL_SPLIT in builder.info.splits and _base_split(src.tfds_split) != AUTO_EVAL_SPLIT:
        return AUTO_EVAL_SPLIT
    return ""


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
    name = src.tfds_name
    # `data.data_dir=~/tfds` reaches us unexpanded: the shell expands ~ only at a word's start or in a NAME=
    data_dir = src.data_dir if _is_remote(src.data_dir) else os.path.expanduser(src.data_dir)
    builder = _open_builder(name, data_dir)
    if _is_remote(data_dir):
        data_dir, builder = _mirrored(name, data_dir, builder)
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    if src.text_field not in keys:
        raise DataError(f"tfds dataset {name!r} has no feature {src.text_field!r}; its features: {', '.join(keys)}")
    version = str(builder.info.version)
    total = _check_split(builder, name, src.tfds_split)
    common = dict(version=version, tokens_field=_tokens_field(builder, name, src, tokenizer))
    held_split = eval_split(builder, src)
    if held_split:
        eval_total = _check_split(builder, name, held_split)
        train = TfdsCorpus(name, src.tfds_split, data_dir, src.text_field, total, **common)
        heldout = TfdsCorpus(name, held_split, data_dir, src.text_field, eval_total, **common)
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

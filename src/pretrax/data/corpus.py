"""Document sources: names listed up front, text read on demand.

A corpus is a random-access sequence of document texts (what
``grain.MapDataset.source`` wants). Listing only touches directory entries, so
start-up stays fast; a file is opened when the pipeline first asks for it.

The embedded default corpus is the running interpreter's standard library: its
``.py`` sources plus the ``pydoc_data`` help topics, one document per topic.
Real text, present on every machine, no download.
"""

from __future__ import annotations

import functools
import os
import sysconfig
import zlib
from typing import Callable, Sequence

from pretrax.errors import DataError

TOPICS_PREFIX = "pydoc_data/topics/"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class Corpus:
    """Random-access documents: ``corpus[i]`` is the text of ``corpus.names[i]``.

    ``read(name)`` returns the text of one document; it is called lazily and
    must be deterministic. A document that cannot be read comes back as ""
    (the packer skips empty documents) rather than stopping a long run.
    (A pre-tokenized tfds corpus returns a document's token ids, np.int32, instead of its text.)
    """

    def __init__(self, names: Sequence[str], read: Callable[[str], str]):
        self.names = tuple(names)
        self._read = read

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self._read(self.names[index])

    def subset(self, names: Sequence[str]) -> "Corpus":
        return Corpus(names, self._read)

    def take(self, indices: Sequence[int]) -> "Corpus":
        """The documents at these positions, in the order given (subclasses keep their own kind)."""
        return self.subset([self.names[i] for i in indices])

    @property
    def fingerprint(self) -> int:
        """A stable hash of the document list: a saved iterator state only fits the corpus it came from.

        Equal to crc32("\\n".join(names)), computed piece by piece so a large corpus needs no joined copy.
        """
        crc = 0
        for i, name in enumerate(self.names):
            crc = zlib.crc32((name if i == 0 else "\n" + name).encode("utf-8"), crc)
        return crc


# ---------------------------------------------------------------- the stdlib corpus


def _topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics  # some distributions strip pydoc_data
    except Exception:  # noqa: BLE001 - any failure just means "no topics"
        return {}
    return {str(k): str(v) for k, v in topics.items()}


def _list_stdlib_files(root: str) -> list[str]:
    """Relative paths of non-empty, readable .py files under root, sorted; site-packages skipped."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk ignores unreadable directories
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            path = os.path.join(dirpath, filename)
            try:
                if os.stat(path).st_size == 0 or not os.access(path, os.R_OK):
                    continue  # empty files (many __init__.py) would only be skipped later
            except OSError:
                continue
            names.append(os.path.relpath(path, root).replace(os.sep, "/"))
    names.sort()
    return names


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> Corpus:
    """The interpreter's stdlib .py files and pydoc topics, in a fixed (sorted) order."""
    root = sysconfig.get_paths()["stdlib"]
    topics = _topics()
    files = _list_stdlib_files(root)
    if topics:  # topics.py is one huge dict literal; its topics stand in for it, one document each
        files = [f for f in files if f != "pydoc_data/topics.py"]
    names = files + [TOPICS_PREFIX + key for key in sorted(topics)]
    if not names:
        raise DataError(f"the stdlib corpus is empty: no readable .py files under {root!r} and no pydoc topics")

    def read(name: str) -> str:
        if name.startswith(TOPICS_PREFIX):
            return topics[name[len(TOPICS_PREFIX) :]]
        try:
            with open(os.path.join(root, name), "rb") as f:
                return f.read().decode("utf-8", errors="replace")  # a few test files are not UTF-8 on purpose
        except OSError:
            return ""

    return Corpus(names, read)


# ---------------------------------------------------------------- splitting (sources.load_source picks the corpus)


def heldout_bucket(name: str) -> int:
    """A document's stable bucket in 0..9999: held out iff below round(data.heldout_percent * 100)."""
    return zlib.crc32(name.encode("utf-8")) % 10_000


def is_heldout(name: str, heldout_percent: float) -> bool:
    """Held out iff a stable hash of the name falls in the bottom heldout_percent of 10,000 buckets.

    Hashing the name (not the position) keeps each document on the same side of
    the split when other documents are added or removed, e.g. across Python versions.
    """
    return heldout_bucket(name) < round(heldout_percent * 100)


def split(corpus: Corpus, heldout_percent: float) -> tuple[Corpus, Corpus]:
    """(train, held-out): disjoint, together the whole corpus, each in corpus order."""
    held = [is_heldout(n, heldout_percent) for n in corpus.names]
    train = [i for i, h in enumerate(held) if not h]
    heldout = [i for i, h in enumerate(held) if h]
    return corpus.take(train), corpus.take(heldout)

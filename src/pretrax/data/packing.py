"""Packing: a stream of variable-length documents -> rows of exactly seq_len tokens.

Concatenate-then-split, written out here instead of using grain's
ConcatThenSplitIterDataset because its state is a nested dict with a replay
count (restoring replays packed rows) and tuple slices that do not survive a
JSON round trip. This packer's whole state is two integers:

    doc     index of the next document in its stream (grain MapDataset index)
    offset  tokens of that document already emitted

so restoring is O(1) and exact: read document ``doc`` again, skip ``offset``
tokens, carry on. Nothing is ever truncated away: a document longer than what
is left of a row fills the row and continues at the start of the next row.
Each piece of a document is its own segment, and positions restart at 0 for
every segment, continuation pieces included: attention never crosses a row,
so positions count from the first token the model can see, and never exceed
seq_len - 1 (what a learned position table of seq_len entries can hold).

Whole examples (``whole_examples=True``, for prefix LM / span corruption /
UL2): a document's features may hold several examples back to back, marked by
an extra per-token feature ``example_starts`` (1 at each example's first
token; consumed here, not emitted). Examples are never split: one that does
not fit in what is left of a row starts the next row (the rest of the row is
padding), each example is its own segment with positions from 0, and
``offset`` is always at an example boundary. An example longer than seq_len
is a DataError (the objective sizes examples to fit).

Example streams (``data.concat_documents``, objectives.ConcatExamples): when
``docs`` has a ``peek(doc, offset)`` method it yields whole examples cut from
the row's documents concatenated; the state is still (doc, offset), now the
position in that token stream where the next example starts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pretrax.errors import DataError

SEGMENT_FEATURES = {"segment_ids": np.int32, "positions": np.int32}  # added by the packer
EXAMPLE_STARTS = "example_starts"  # per-token example-start marker (whole_examples mode)
MAX_EMPTY_RUN = 10_000  # consecutive empty documents before we call the source broken


class RowPacker:
    """Packs one stream of per-document feature dicts into rows of seq_len.

    ``docs[k]`` is a dict of equal-length 1-D arrays (the objective's features,
    e.g. inputs/targets/loss_mask/bidirectional). A row holds as many documents
    as fit, back to back, then padding (all features 0, segment id 0) only if
    the stream ends. ``finite=False`` streams (a repeated dataset) never end.
    """

    def __init__(self, docs: Sequence[Mapping[str, np.ndarray]], seq_len: int,
                 features: Mapping[str, Any], *, finite: bool, whole_examples: bool = False):
        self._docs = docs
        self.whole_examples = whole_examples
        self.seq_len = seq_len
        self._declared = sorted([*features, EXAMPLE_STARTS] if whole_examples else features)
        self.dtypes = {**{k: np.dtype(v) for k, v in features.items()}, **{k: np.dtype(v) for k, v in SEGMENT_FEATURES.items()}}
        self._end = len(docs) if finite else None
        self._arange = np.arange(seq_len, dtype=np.int32)
        self.doc = 0
        self.offset = 0
        self._cached: tuple | None = None  # (doc, features, length, example bounds)
        self._stream = docs if hasattr(docs, "peek") else None  # an example stream (module docstring)

    # ---- state: two integers

    def get_state(self) -> tuple[int, int]:
        return self.doc, self.offset

    def set_state(self, doc: int, offset: int) -> None:
        self.doc, self.offset = int(doc), int(offset)

    # ---- rows

    def new_row(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(self.seq_len, dt) for k, dt in self.dtypes.items()}

    def next_row(self) -> dict[str, np.ndarray]:
        row = self.new_row()
        self.fill(row)
        return row

    def fill(self, row: Mapping[str, np.ndarray]) -> None:
        """Write the next row into ``row`` (zero-initialised arrays of seq_len, e.g. views into a batch)."""
        if self._stream is not None:
            return self._fill_examples(row)
        pos, segment, empty_run = 0, 0, 0
        while pos < self.seq_len:
            if self._end is not None and self.doc >= self._end:
                return  # stream exhausted: the rest of the row stays padding
            features, length = self._features(self.doc)
            if self.offset >= length:
                empty_run += 1
                if empty_run > MAX_EMPTY_RUN:
                    raise DataError(f"{MAX_EMPTY_RUN} documents in a row were empty or unreadable; check the data source")
                self.doc, self.offset = self.doc + 1, 0
                continue
            empty_run = 0
            if self.whole_examples:
                take = self._example_length(self.doc, self.offset, length)
                if take > self.seq_len - pos:
                    return  # the example starts the next row; the rest of this row stays padding
            else:
                take = min(self.seq_len - pos, length - self.offset)
            segment += 1
            for key, value in features.items():
                if key == EXAMPLE_STARTS and self.whole_examples:
                    continue
                row[key][pos : pos + take] = value[self.offset : self.offset + take]
            row["segment_ids"][pos : pos + take] = segment
            row["positions"][pos : pos + take] = self._arange[:take]
            pos += take
            self.offset += take
            if self.offset == length:
                self.doc, self.offset = self.doc + 1, 0

    def _fill_examples(self, row: Mapping[str, np.ndarray]) -> None:
        """From an example stream: whole examples until the next one does not fit (the rest is padding)."""
        pos, segment = 0, 0
        while (nxt := self._stream.peek(self.doc, self.offset)) is not None:
            example, after = nxt
            if sorted(example) != self._declared:
                raise DataError(f"example features {sorted(example)} differ from the declared {self._declared}")
            take = len(example[EXAMPLE_STARTS])
            if take > self.seq_len:
                raise DataError(f"an example of {take} tokens at document {self.doc} is longer than seq_len={self.seq_len}")
            if take > self.seq_len - pos:
                return
            segment += 1
            for key, value in example.items():
                if key != EXAMPLE_STARTS:
                    row[key][pos : pos + take] = value
            row["segment_ids"][pos : pos + take] = segment
            row["positions"][pos : pos + take] = self._arange[:take]
            pos += take
            self.doc, self.offset = after

    def _example_length(self, k: int, offset: int, length: int) -> int:
        bounds = self._cached[3]
        i = int(np.searchsorted(bounds, offset))
        if i == len(bounds) or bounds[i] != offset:
            raise DataError(f"packer offset {offset} of document {k} is not at an example boundary")
        take = int(bounds[i + 1] if i + 1 < len(bounds) else length) - offset
        if take > self.seq_len:
            raise DataError(f"document {k} holds an example of {take} tokens, longer than seq_len={self.seq_len}")
        return take

    def _features(self, k: int) -> tuple[Mapping[str, np.ndarray], int]:
        # a long document spans many rows: keep it instead of re-reading and re-tokenizing it per row
        if self._cached is None or self._cached[0] != k:
            features = self._docs[k]
            if sorted(features) != self._declared:
                raise DataError(f"document features {sorted(features)} differ from the declared {self._declared}")
            lengths = {len(v) for v in features.values()}
            if len(lengths) != 1:
                raise DataError(f"document features have different lengths {sorted(lengths)}; they must be equal to pack")
            length = lengths.pop()
            bounds = None
            if self.whole_examples:
                bounds = np.flatnonzero(features[EXAMPLE_STARTS])
                if length and (len(bounds) == 0 or bounds[0] != 0):
                    raise DataError(f"document {k}: {EXAMPLE_STARTS} must mark its first token")
            self._cached = (k, features, length, bounds)
        return self._cached[1], self._cached[2]

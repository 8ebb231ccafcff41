"""Packing for the encoder-decoder: examples -> an encoder row and a decoder row, kept in step.

Each encoder-decoder example has an encoder part (``encoder_*`` features,
mode + inputs + eos) and a decoder part (inputs, targets, loss_mask,
denoiser) of different lengths. A batch row is two rows: ``inputs_len``
encoder tokens and ``targets_len`` decoder tokens. Example k of a row is
segment k in BOTH (``encoder_segment_ids`` / ``segment_ids``), so the model's
cross-attention lets decoder segment k see encoder segment k only; positions
restart at 0 in each segment on both sides. An example goes in whole or, when
either side lacks room, starts the next row (the rest of both rows is padding,
segment 0). This is T5X's packing of encoder-decoder features, done with the
same O(1) resumable state as RowPacker: two integers,

    doc      index of the next document in its stream
    example  examples of that document already emitted

An example longer than inputs_len or targets_len is a DataError (the
objective sizes examples to fit).

From an example stream (``docs`` with ``peek``: objectives.ConcatExamples,
``data.concat_documents``) the state is (doc, offset): the position in the
row's concatenated documents where the next example starts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pretrax.data.packing import MAX_EMPTY_RUN
from pretrax.errors import DataError

EXAMPLE_STARTS = "example_starts"
ENCODER_EXAMPLE_STARTS = "encoder_example_starts"
ENCODER_SEGMENT_FEATURES = {"encoder_segment_ids": np.int32, "encoder_positions": np.int32}
DECODER_SEGMENT_FEATURES = {"segment_ids": np.int32, "positions": np.int32}


def is_encoder_feature(key: str) -> bool:
    return key.startswith("encoder_")


class PairPacker:
    """Packs one stream of per-document encoder-decoder features into (encoder, decoder) rows."""

    def __init__(self, docs: Sequence[Mapping[str, np.ndarray]], inputs_len: int, targets_len: int,
                 features: Mapping[str, Any], *, finite: bool):
        self._docs = docs
        self.inputs_len, self.targets_len = inputs_len, targets_len
        self._declared = sorted([*features, EXAMPLE_STARTS, ENCODER_EXAMPLE_STARTS])
        self.dtypes = {**{k: np.dtype(v) for k, v in features.items()},
                       **{k: np.dtype(v) for k, v in {**ENCODER_SEGMENT_FEATURES, **DECODER_SEGMENT_FEATURES}.items()}}
        self._end = len(docs) if finite else None
        self._arange = np.arange(max(inputs_len, targets_len), dtype=np.int32)
        self.doc = 0
        self.example = 0
        self._cached: tuple | None = None  # (doc, features, example bounds)
        self._stream = docs if hasattr(docs, "peek") else None  # an example stream (module docstring)

    def get_state(self) -> tuple[int, int]:
        return self.doc, self.example

    def set_state(self, doc: int, example: int) -> None:
        self.doc, self.example = int(doc), int(example)

    def row_length(self, key: str) -> int:
        return self.inputs_len if is_encoder_feature(key) else self.targets_len

    def new_row(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(self.row_length(k), dt) for k, dt in self.dtypes.items()}

    def next_row(self) -> dict[str, np.ndarray]:
        row = self.new_row()
        self.fill(row)
        return row

    def fill(self, row: Mapping[str, np.ndarray]) -> None:
        """Write the next (encoder, decoder) row pair into zero-initialised ``row`` arrays."""
        if self._stream is not None:
            return self._fill_examples(row)
        enc_pos, dec_pos, segment, empty_run = 0, 0, 0, 0
        while True:
            if self._end is not None and self.doc >= self._end:
                return  # stream exhausted: the rest of the rows stays padding
            features, bounds = self._examples(self.doc)
            if self.example >= len(bounds):
                empty_run += 1
                if empty_run > MAX_EMPTY_RUN:
                    raise DataError(f"{MAX_EMPTY_RUN} documents in a row were empty or unreadable; check the data source")
                self.doc, self.example = self.doc + 1, 0
                continue
            empty_run = 0
            (ea, eb), (da, db) = bounds[self.example]
            if eb - ea > self.inputs_len - enc_pos or db - da > self.targets_len - dec_pos:
                return  # the example starts the next row pair
            segment += 1
            self._put(row, features, (ea, eb), (da, db), enc_pos, dec_pos, segment)
            enc_pos, dec_pos = enc_pos + eb - ea, dec_pos + db - da
            self.example += 1
            if self.example == len(bounds):
                self.doc, self.example = self.doc + 1, 0

    def _fill_examples(self, row: Mapping[str, np.ndarray]) -> None:
        """From an example stream: whole examples until the next one does not fit in either row."""
        enc_pos, dec_pos, segment = 0, 0, 0
        while (nxt := self._stream.peek(self.doc, self.example)) is not None:
            example, after = nxt
            if sorted(example) != self._declared:
                raise DataError(f"example features {sorted(example)} differ from the declared {self._declared}")
            enc, dec = len(example[ENCODER_EXAMPLE_STARTS]), len(example[EXAMPLE_STARTS])
            if enc > self.inputs_len or dec > self.targets_len:
                raise DataError(f"an example of {enc} encoder / {dec} decoder tokens at document {self.doc} is longer "
                                f"than inputs_len={self.inputs_len} / targets_len={self.targets_len}")
            if enc > self.inputs_len - enc_pos or dec > self.targets_len - dec_pos:
                return
            segment += 1
            self._put(row, example, (0, enc), (0, dec), enc_pos, dec_pos, segment)
            enc_pos, dec_pos = enc_pos + enc, dec_pos + dec
            self.doc, self.example = after

    def _put(self, row, features, enc: tuple[int, int], dec: tuple[int, int], enc_pos: int, dec_pos: int,
             segment: int) -> None:
        """Copy features[enc] / features[dec] to the rows at enc_pos / dec_pos as segment ``segment``."""
        (ea, eb), (da, db) = enc, dec
        for key, value in features.items():
            if key in (EXAMPLE_STARTS, ENCODER_EXAMPLE_STARTS):
                continue
            if is_encoder_feature(key):
                row[key][enc_pos : enc_pos + eb - ea] = value[ea:eb]
            else:
                row[key][dec_pos : dec_pos + db - da] = value[da:db]
        row["encoder_segment_ids"][enc_pos : enc_pos + eb - ea] = segment
        row["encoder_positions"][enc_pos : enc_pos + eb - ea] = self._arange[: eb - ea]
        row["segment_ids"][dec_pos : dec_pos + db - da] = segment
        row["positions"][dec_pos : dec_pos + db - da] = self._arange[: db - da]

    def _examples(self, k: int) -> tuple[Mapping[str, np.ndarray], list]:
        """Document k's features and its examples' ((enc_start, enc_end), (dec_start, dec_end))."""
        if self._cached is None or self._cached[0] != k:
            features = self._docs[k]
            if sorted(features) != self._declared:
                raise DataError(f"document features {sorted(features)} differ from the declared {self._declared}")
            enc = _bounds(features, ENCODER_EXAMPLE_STARTS, k, encoder=True)
            dec = _bounds(features, EXAMPLE_STARTS, k, encoder=False)
            if len(enc) != len(dec):
                raise DataError(f"document {k} has {len(enc)} encoder examples but {len(dec)} decoder examples")
            for (ea, eb), (da, db) in zip(enc, dec):
                if eb - ea > self.inputs_len or db - da > self.targets_len:
                    raise DataError(f"document {k} holds an example of {eb - ea} encoder / {db - da} decoder tokens, "
                                    f"longer than inputs_len={self.inputs_len} / targets_len={self.targets_len}")
            self._cached = (k, features, list(zip(enc, dec)))
        return self._cached[1], self._cached[2]


def _bounds(features: Mapping[str, np.ndarray], starts_key: str, k: int, *, encoder: bool) -> list[tuple[int, int]]:
    lengths = {len(v) for key, v in features.items() if is_encoder_feature(key) == encoder}
    if len(lengths) != 1:
        side = "encoder" if encoder else "decoder"
        raise DataError(f"document {k}: {side} features have different lengths {sorted(lengths)}")
    length = lengths.pop()
    starts = np.flatnonzero(features[starts_key])
    if length and (len(starts) == 0 or starts[0] != 0):
        raise DataError(f"document {k}: {starts_key} must mark its first token")
    at = list(starts) + [length]
    return [(int(a), int(b)) for a, b in zip(at[:-1], at[1:])]

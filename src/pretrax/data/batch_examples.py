"""The examples packed into a host batch, as the model reads them, for either model kind.

``data inspect`` and ``data stats`` look at batches example by example; this
is the one place that knows how an example sits in a packed row:

* decoder-only: segment s of a row; its inputs are the tokens attended
  bidirectionally (mode token + inputs of a prefix-LM example; none for
  causal_lm), its targets the ``targets`` in the loss;
* encoder-decoder: segment s of the encoder row and of the decoder row; its
  inputs are the encoder's tokens without the final eos (mode token +
  inputs), its targets the decoder's ``targets`` in the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackedExample:
    row: int
    segment: int
    tokens: int  # decoder-side tokens the example occupies (its row length share)
    inputs: np.ndarray
    targets: np.ndarray
    denoiser: int  # index into denoiser_names(data); 0 for causal_lm


def packed_examples(batch: Mapping[str, np.ndarray]) -> Iterator[PackedExample]:
    """Every example of a host batch, row by row, segment by segment."""
    encoder = "encoder_inputs" in batch
    for row in range(batch["segment_ids"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in np.unique(seg):
            if s == 0:
                continue
            at = seg == s
            if encoder:
                inputs = batch["encoder_inputs"][row][batch["encoder_segment_ids"][row] == s][:-1]
            else:
                inputs = batch["inputs"][row][at][batch["bidirectional"][row][at] == 1]
            targets = batch["targets"][row][at][batch["loss_mask"][row][at] > 0]
            denoiser = int(batch["denoiser"][row][at][0]) if "denoiser" in batch else 0
            yield PackedExample(row, int(s), int(at.sum()), inputs, targets, denoiser)

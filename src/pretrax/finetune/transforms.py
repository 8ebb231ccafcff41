"""GPT-1's task-specific input transformations (Radford et al. 2018, §3.3, Figure 1) as token ids.

    classification   [start] text [extract]
    entailment       [start] premise [delim] hypothesis [extract]
    similarity       [start] a [delim] b [extract]   and   [start] b [delim] a [extract]   (no inherent order:
                     both go through the model; their final states are added before the linear head)
    multiple choice  [start] context [delim] choice_k [extract]   for each choice k (one sequence per option;
                     a softmax over the options)

Every example becomes K sequences (K = 1, 1, 2, number of choices), padded to max_len.

Special tokens. GPT-1 added three new, randomly initialised embeddings. pretrax keeps the pretrained
vocabulary and uses: start = the tokenizer's bos (the byte tokenizer reserves it; pretraining never
feeds it, so it is as fresh a token as GPT-1's), extract = eos (it ends every pretraining document,
so its final state already summarises what came before), delimiter = `spare` (default): the first
embedding row past the tokenizer's ids (the table is rounded up to a multiple of 128, so such rows
exist and are never produced by the tokenizer: a new token as GPT-1's, learned during fine-tuning),
or, when the task gives a string, that string's tokens (a table without a spare row needs one).

Too long: the longest text part is cut from its end until the sequence fits (the specials always stay).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from pretrax.errors import ConfigError
from pretrax.finetune.task import Example


@dataclasses.dataclass(frozen=True)
class Specials:
    start: int
    delimiter: tuple[int, ...]
    extract: int


def specials_for(tokenizer, model_vocab: int, delimiter: str) -> Specials:
    """The start / delimiter / extract ids for a run's tokenizer and embedding table (see the module doc)."""
    if delimiter == "spare":
        spare = tokenizer.vocab_size
        if spare >= model_vocab:
            raise ConfigError(
                f"delimiter: spare needs an embedding row past the tokenizer's {tokenizer.vocab_size} ids, but the "
                f"model's table has {model_vocab} rows; set the task's delimiter to a string, e.g. ' $ '")
        return Specials(tokenizer.bos_id, (spare,), tokenizer.eos_id)
    ids = tuple(tokenizer.encode(delimiter))
    if not ids:
        raise ConfigError(f"delimiter {delimiter!r} encodes to no tokens; give 'spare' or a string with tokens")
    return Specials(tokenizer.bos_id, ids, tokenizer.eos_id)


def sequences(kind: str, example: Example, encode: Callable[[str], list[int]], specials: Specials,
              max_len: int) -> list[list[int]]:
    """The example's K id sequences, each at most max_len long and ending in the extract token."""
    s = specials
    if kind == "classification":
        return [_join([encode(example.parts[0])], s, max_len)]
    if kind == "entailment":
        return [_join([encode(example.parts[0]), encode(example.parts[1])], s, max_len)]
    if kind == "similarity":
        a, b = encode(example.parts[0]), encode(example.parts[1])
        return [_join([a, b], s, max_len), _join([b, a], s, max_len)]
    if kind == "multiple_choice":
        context = encode(example.parts[0])
        return [_join([context, encode(choice)], s, max_len) for choice in example.choices]
    raise ConfigError(f"unknown task type {kind!r}")


def _join(parts: list[list[int]], s: Specials, max_len: int) -> list[int]:
    """[start] p0 [delim] p1 ... [extract], the longest parts shortened from their ends to fit max_len."""
    fixed = 2 + len(s.delimiter) * (len(parts) - 1)
    budget = max_len - fixed
    if budget < len(parts):
        raise ConfigError(f"max_len {max_len} leaves no room for the text ({fixed} special tokens); raise max_len")
    lengths = _fit([len(p) for p in parts], budget)
    out = [s.start]
    for i, (p, n) in enumerate(zip(parts, lengths)):
        if i:
            out += s.delimiter
        out += p[:n]
    return out + [s.extract]


def _fit(lengths: list[int], budget: int) -> list[int]:
    """Lengths with the longest cut first (the largest cap c with sum(min(len, c)) <= budget)."""
    if sum(lengths) <= budget:
        return lengths
    lo, hi = 0, max(lengths)
    while lo < hi:  # the largest cap that fits
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return [min(n, lo) for n in lengths]


def encode_batch(kind: str, examples: Sequence[Example], encode: Callable[[str], list[int]], specials: Specials,
                 max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Arrays for the step: tokens, segment_ids (1 real, 0 padding) (N, K, max_len), extract (N, K): the
    extract token's position, label (N,)."""
    seqs = [sequences(kind, e, encode, specials, max_len) for e in examples]
    k = len(seqs[0])
    tokens = np.full((len(seqs), k, max_len), pad_id, np.int32)
    segments = np.zeros((len(seqs), k, max_len), np.int32)
    extract = np.zeros((len(seqs), k), np.int32)
    for i, group in enumerate(seqs):
        for j, ids in enumerate(group):
            tokens[i, j, :len(ids)] = ids
            segments[i, j, :len(ids)] = 1
            extract[i, j] = len(ids) - 1
    label = np.asarray([e.label for e in examples], np.int32)
    return {"tokens": tokens, "segment_ids": segments, "extract": extract, "label": label}

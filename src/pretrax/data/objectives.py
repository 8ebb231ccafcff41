"""Objectives: tokenized documents -> training examples (causal LM, prefix LM, span corruption, UL2).

An objective is a function ``(tokens, rng) -> dict of equal-length arrays``;
``tokens`` is one document as ``bos + ids + eos`` and ``rng`` a numpy
Generator derived from (seed, document index), so every example is a pure
function of the run seed and the document. ``make_objective(data, tokenizer,
seq_len)`` builds the function for ``data.objective`` and checks the
configuration (ConfigError, one line) before any training starts.

The denoising objectives cut their examples, by default, from a batch row's
documents concatenated (``data.concat_documents``, as T5/UL2: ``ConcatExamples``
below; the document stage then only tokenizes, ``document_tokens``); calling
the objective on one document gives that document's examples, the
``concat_documents: false`` option. docs/objectives.md maps all of this to the
T5/UL2 code.

Features (what the packer puts in the batch, with ``segment_ids``/``positions``):

* causal_lm: ``FEATURES`` = inputs, targets, loss_mask, bidirectional
  (unchanged: next-token prediction over the whole document).
* prefix_lm, span_corruption, ul2: ``FEATURES`` + ``denoiser`` (int32 per
  token: index into ``denoiser_names(data)``; padding carries 0 with
  loss_mask 0, so per-denoiser losses must be weighted by loss_mask), plus
  ``example_starts`` (1 at the first token of each example) which the packer
  consumes (``RowPacker(whole_examples=True)``) and does not emit.

Denoisers (UL2, Tay et al. 2022, arXiv 2205.05131; U-PaLM/UL2R, arXiv 2210.11399)
------------------------------------------------------------------------------
* R / X (``kind: span``): T5 span corruption with mean span length mu and
  noise density r. ``random_spans_noise_mask`` is T5's definition:
  num_noise = round(L*r) clipped to [1, L-1] (round half to even, as
  tf.round); num_spans = max(1, round(num_noise / mu)); noise and non-noise
  tokens are each split into exactly num_spans non-empty pieces uniformly at
  random; pieces alternate non-noise, noise. (Only deviation: num_spans is
  also capped at the number of non-noise tokens, which T5 leaves to produce
  empty pieces when r is near 1 and mu near 1.) ``roll`` (per denoiser,
  default false as in the released UL2 code) rotates the mask by a random
  amount that never cuts a noise span; counts are unchanged. Unrolled, a
  single-span mask always masks the tail, as T5's does.
  Inputs replace noise span k by sentinel k (``data.num_sentinels`` of them,
  counting down from the top of the vocabulary: ``with_sentinels``); targets are sentinel_0 span_0 sentinel_1
  span_1 ... then eos (T5: targets start with ``<extra_id_0>``).
* S (``kind: prefix``): one split point uniform in [1, L-1]; the prefix is the
  inputs, the rest + eos the targets (as the released UL2 code; never span
  masking with mu = L/4, which would always mask the final 25%).

Defaults for ``objective: ul2`` with ``data.denoisers`` empty: the paper's
seven denoisers (UL2 paper, section 3.1.2 / REFERENCES.md "UL2"):
R(mu=3, r=0.15), R(mu=8, r=0.15), S, X(mu=3, r=0.5), X(mu=8, r=0.5),
X(mu=64, r=0.15), X(mu=64, r=0.5). Mode tokens as in the released models:
R -> [NLU], S -> [S2S], X -> [NLG], prepended to the inputs. Weights: S 20%
and the six R/X denoisers 80% equally (13.3% each), the common reading of the
paper's "R 40%, X 40%, S 20%" (the released code samples uniformly unless
rates are given). ``span_corruption`` is T5's R(3, 0.15) without a mode token;
``prefix_lm`` is S alone without a mode token. UL2R (U-PaLM) is given in
configs/ul2r_tiny_decoder.yaml: 50% S, 25% R(3, 0.15), 25% X split between
X(32, 0.15) and X(3, 0.5).

Each example's denoiser is drawn from the example's rng with probability
weight / sum(weights).

Decoder-only format (seqio's PrefixLM convention)
-------------------------------------------------
One example is the sequence ``seq = [mode] + inputs + targets`` (no mode token
when it is ""); its features are next-token pairs: the model input at t is
seq[t] and the target seq[t+1], so an example holds len(seq) - 1 tokens.
``bidirectional`` = 1 where seq[t] belongs to mode + inputs (prefix-LM
attention), ``loss_mask`` = 1 where seq[t+1] belongs to the targets.

Encoder-decoder format (T5 / T5X's "packed" convention)
-------------------------------------------------------
The encoder reads ``[mode] + inputs + [eos]`` (feature ``encoder_inputs``);
the decoder reads ``[bos] + targets[:-1]`` (``inputs``, the targets shifted
right, bos as the start token) and predicts ``targets`` (ending in eos), all
in the loss (``loss_mask`` 1). So the decoder-side features keep the
decoder-only names (inputs, targets, loss_mask, denoiser) and the encoder adds
``encoder_inputs``; the two streams have different lengths, so each has its
own example-start marker (``example_starts``, ``encoder_example_starts``) and
the pair packer (pair_packing.py) keeps example k in segment k of both rows.

Raw lengths (how many document tokens one example consumes)
-----------------------------------------------------------
For a span denoiser on L raw tokens with n noise tokens and s spans:
inputs = L - n + s, targets = n + s + 1 (eos), so the decoder-only example
holds m + L + 2s tokens (m = 1 with a mode token). The raw length is the
largest L with m + L + 2 s(L) <= seq_len (the left side grows strictly with
L, so every shorter segment fits too). For S: L = seq_len - m. A row's
documents concatenated (each ids + eos), or with ``concat_documents: false``
one document's ids (bos/eos stripped), are cut into consecutive segments, one
per example, each with its own denoiser; a last, shorter segment (the end of
a document, or of a finite stream) gets the same count rules applied to its
own length (so fewer spans); a final leftover of a single token is dropped
(no denoiser can use it). ``encoder_decoder_raw_length``
gives the encoder-decoder rule (largest L with m + inputs + eos <= inputs_len
and targets <= targets_len), e.g. 568 for (3, 0.15) at 512/512 without a mode
token (T5's numbers). For S in the encoder-decoder, L = min(inputs_len - m - 1,
targets_len - 1) + 1: then every split point in [1, L-1] fits both sides, so
the split stays uniform (with unequal lengths the shorter side bounds L).

Build-time checks (ConfigError): noise_density outside (0, 1); mean_span < 1;
weights negative or not summing to a positive number; seq_len (encoder-decoder:
inputs_len / targets_len) below a denoiser's minimum (the shortest example in which one noise span of mean
length fits, i.e. round(L*r) >= mu; for S two raw tokens); more spans per
example than ``data.num_sentinels`` (never silent reuse of ordinary ids), or
more sentinels than the model's vocabulary holds above the ordinary ids
(``check_sentinels_fit``); ``roll`` on S; a tokenizer without the mode tokens.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from pretrax.config import DataSection, DenoiserSection
from pretrax.data.tokenizer import with_sentinels  # noqa: F401 (objectives.with_sentinels)
from pretrax.errors import ConfigError
from pretrax.sizes import encoder_decoder_lengths as encoder_decoder_lengths_of  # noqa: F401 (callers)

# What every objective emits per document (and the batch carries, with segment_ids and positions).
FEATURES = {"inputs": np.int32, "targets": np.int32, "loss_mask": np.float32, "bidirectional": np.int32}
# Denoising objectives add the denoiser index per token (for loss_R / loss_S / loss_X metrics).
DENOISER_FEATURES = {**FEATURES, "denoiser": np.int32}
EXAMPLE_STARTS = "example_starts"  # per-token marker of example starts; consumed by the packer
# Encoder-decoder: the decoder-side features above (no ``bidirectional``) plus the encoder's stream.
ENCODER_FEATURES = {"encoder_inputs": np.int32}
ENCODER_DECODER_FEATURES = {"inputs": np.int32, "targets": np.int32, "loss_mask": np.float32, "denoiser": np.int32,
                            **ENCODER_FEATURES}
ENCODER_EXAMPLE_STARTS = "encoder_example_starts"

Objective = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]

_MODE_NAMES = {"[NLU]": "R", "[S2S]": "S", "[NLG]": "X"}


# ---------------------------------------------------------------- causal LM


def causal_lm(tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Next-token prediction over the whole document (tokens are bos ... eos)."""
    del rng  # deterministic; the argument is the seam for random objectives
    n = len(tokens) - 1
    return {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "loss_mask": np.ones(n, np.float32),
        "bidirectional": np.zeros(n, np.int32),
    }


# ---------------------------------------------------------------- pure example builders


def _round(x: float) -> int:
    return int(np.round(x))  # half to even, as tf.round in T5


def span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(num_noise, num_spans) that ``random_spans_noise_mask`` uses for a segment of ``length`` >= 2."""
    num_noise = min(max(_round(length * noise_density), 1), length - 1)
    num_spans = max(1, _round(num_noise / mean_span))
    return num_noise, min(num_spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """num_items split into num_segments non-empty pieces, uniformly over all such splits."""
    cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False) + 1) if num_segments > 1 else []
    return np.diff(np.concatenate([[0], cuts, [num_items]])).astype(np.int64)


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float, rng: np.random.Generator,
                            roll: bool = False) -> np.ndarray:
    """bool[length], True = noise, as T5 defines it (module docstring); ``roll`` rotates it without cutting a span."""
    if length < 2:
        raise ValueError(f"a noise mask needs length >= 2, got {length}")
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    noise = _random_segmentation(num_noise, num_spans, rng)
    clean = _random_segmentation(length - num_noise, num_spans, rng)
    mask = np.repeat(np.tile(np.array([False, True]), num_spans), np.stack([clean, noise], 1).reshape(-1))
    if roll:
        # start anywhere except inside a noise span: counts and span lengths stay exact
        ok = np.flatnonzero(np.concatenate([[True], ~(mask[:-1] & mask[1:])]))
        mask = np.roll(mask, -int(ok[rng.integers(len(ok))]))
    return mask


def span_corruption_example(segment: np.ndarray, mask: np.ndarray, sentinels: Sequence[int],
                            eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): noise span k -> sentinels[k] in the inputs; targets = s_0 span_0 s_1 span_1 ... eos."""
    segment = np.asarray(segment, np.int32)
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each noise span
    span_index = np.cumsum(starts) - 1
    if starts.sum() > len(sentinels):
        raise ValueError(f"{int(starts.sum())} noise spans but only {len(sentinels)} sentinels")
    sent = np.asarray(sentinels, np.int32)
    inputs = np.where(starts, sent[np.maximum(span_index, 0)], segment)[~mask | starts]
    # targets: for each noise token, the sentinel first when it starts a span
    n = int(mask.sum()) + int(starts.sum())
    targets = np.empty(n + 1, np.int32)
    where = np.flatnonzero(mask)
    out_pos = np.arange(len(where)) + np.cumsum(starts[where])  # each span start shifts by one more
    targets[out_pos] = segment[where]
    targets[out_pos[starts[where]] - 1] = sent[span_index[where][starts[where]]]
    targets[-1] = eos_id
    return inputs.astype(np.int32), targets


def prefix_example(segment: np.ndarray, split: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) = (segment[:split], segment[split:] + eos)."""
    segment = np.asarray(segment, np.int32)
    return segment[:split], np.concatenate([segment[split:], [eos_id]]).astype(np.int32)


def decoder_only_example(mode: Sequence[int], inputs: np.ndarray, targets: np.ndarray,
                         denoiser: int) -> dict[str, np.ndarray]:
    """One prefix-LM example: seq = mode + inputs + targets as next-token features (module docstring)."""
    seq = np.concatenate([np.asarray(mode, np.int32), inputs, targets]).astype(np.int32)
    prefix = len(mode) + len(inputs)
    t = np.arange(len(seq) - 1)
    starts = np.zeros(len(t), np.int32)
    starts[:1] = 1
    return {
        "inputs": seq[:-1],
        "targets": seq[1:],
        "loss_mask": (t >= prefix - 1).astype(np.float32),
        "bidirectional": (t < prefix).astype(np.int32),
        "denoiser": np.full(len(t), denoiser, np.int32),
        EXAMPLE_STARTS: starts,
    }


def encoder_decoder_example(mode: Sequence[int], inputs: np.ndarray, targets: np.ndarray, denoiser: int,
                            bos_id: int, eos_id: int) -> dict[str, np.ndarray]:
    """One encoder-decoder example: encoder mode + inputs + eos, decoder bos + targets[:-1] -> targets."""
    enc = np.concatenate([np.asarray(mode, np.int32), inputs, [eos_id]]).astype(np.int32)
    targets = np.asarray(targets, np.int32)
    n = len(targets)
    starts, enc_starts = np.zeros(n, np.int32), np.zeros(len(enc), np.int32)
    starts[:1], enc_starts[:1] = 1, 1
    return {
        "encoder_inputs": enc,
        "inputs": np.concatenate([[bos_id], targets[:-1]]).astype(np.int32),
        "targets": targets,
        "loss_mask": np.ones(n, np.float32),
        "denoiser": np.full(n, denoiser, np.int32),
        EXAMPLE_STARTS: starts,
        ENCODER_EXAMPLE_STARTS: enc_starts,
    }


# ---------------------------------------------------------------- denoiser mixtures


def _r(mu, r, w):
    return DenoiserSection(kind="span", mean_span=mu, noise_density=r, weight=w, mode_token="[NLU]", name="R")


def _x(mu, r, w):
    return DenoiserSection(kind="span", mean_span=mu, noise_density=r, weight=w, mode_token="[NLG]", name="X")


UL2_DEFAULT = (
    _r(3, 0.15, 0.8 / 6), _r(8, 0.15, 0.8 / 6),
    DenoiserSection(kind="prefix", weight=0.2, mode_token="[S2S]", name="S"),
    _x(3, 0.5, 0.8 / 6), _x(8, 0.5, 0.8 / 6), _x(64, 0.15, 0.8 / 6), _x(64, 0.5, 0.8 / 6),
)
SPAN_CORRUPTION = (DenoiserSection(kind="span", mean_span=3, noise_density=0.15, mode_token="", name="R"),)
PREFIX_LM = (DenoiserSection(kind="prefix", mode_token="", name="S"),)


def denoisers(data: DataSection) -> tuple[DenoiserSection, ...]:
    """The denoisers data.objective uses (empty for causal_lm)."""
    if data.objective == "causal_lm":
        return ()
    if data.objective == "ul2":
        return tuple(data.denoisers) or UL2_DEFAULT
    return SPAN_CORRUPTION if data.objective == "span_corruption" else PREFIX_LM


def _name(d: DenoiserSection) -> str:
    if d.name:
        return d.name
    if d.mode_token in _MODE_NAMES:
        return _MODE_NAMES[d.mode_token]
    if d.kind == "prefix":
        return "S"
    return "X" if d.mean_span >= 12 or d.noise_density >= 0.3 else "R"  # the paper's R/X boundary


def denoiser_names(data: DataSection) -> list[str]:
    """Metric name of each denoiser (``denoiser`` feature value i -> names[i]); repeats group, e.g. loss_R."""
    return [_name(d) for d in denoisers(data)] if data.objective != "causal_lm" else ["causal"]


def objective_features(objective: str, encoder_decoder: bool = False) -> dict[str, type]:
    """Features the packed batch carries for an objective (besides segment_ids and positions)."""
    if encoder_decoder:
        return dict(ENCODER_DECODER_FEATURES)
    return dict(FEATURES) if objective == "causal_lm" else dict(DENOISER_FEATURES)


def _describe(d: DenoiserSection, i: int) -> str:
    head = f"data.denoisers[{i}] ({_name(d)}"
    return head + (f", mean_span={d.mean_span:g}, noise_density={d.noise_density:g})" if d.kind == "span" else ", prefix)")


def decoder_example_length(d: DenoiserSection, raw: int) -> int:
    """Tokens of the decoder-only example built from ``raw`` >= 2 document tokens."""
    m = 1 if d.mode_token else 0
    if d.kind == "prefix":
        return m + raw
    _, s = span_counts(raw, d.noise_density, d.mean_span)
    return m + raw + 2 * s


def decoder_raw_length(d: DenoiserSection, seq_len: int) -> int:
    """Largest raw length whose decoder-only example fits seq_len (0 if none does)."""
    lo, hi = 1, max(1, seq_len)  # example length grows strictly with raw length: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if decoder_example_length(d, mid) <= seq_len:
            lo = mid
        else:
            hi = mid - 1
    return lo if lo >= 2 and decoder_example_length(d, lo) <= seq_len else 0


def encoder_decoder_lengths(d: DenoiserSection, raw: int, mode: int = 0) -> tuple[int, int]:
    """(encoder tokens, decoder tokens) of the longest example ``raw`` >= 2 document tokens can make."""
    if d.kind == "prefix":  # the split that puts the most on each side
        return mode + (raw - 1) + 1, raw
    n, s = span_counts(raw, d.noise_density, d.mean_span)
    return mode + raw - n + s + 1, n + s + 1


def encoder_decoder_raw_length(d: DenoiserSection, inputs_len: int, targets_len: int, mode: int = 0) -> int:
    """Largest raw length whose encoder-decoder example fits (0 if none does); both sides grow with raw length."""
    def fits(raw):
        enc, dec = encoder_decoder_lengths(d, raw, mode)
        return enc <= inputs_len and dec <= targets_len

    lo, hi = 1, max(1, inputs_len + targets_len)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo if lo >= 2 and fits(lo) else 0


def _min_raw(d: DenoiserSection) -> int:
    """Shortest raw length at which the denoiser is itself: one noise span of mean length fits (S: 2)."""
    if d.kind == "prefix":
        return 2
    raw = max(2, math.floor(d.mean_span / d.noise_density) - 2)
    while span_counts(raw, d.noise_density, d.mean_span)[0] < d.mean_span:
        raw += 1
    return raw


class _Fit:
    """Where examples must fit: one decoder row of seq_len, or encoder/decoder rows of inputs_len/targets_len."""

    def __init__(self, seq_len: int, encoder_decoder: tuple[int, int] | None):
        self.seq_len, self.encoder_decoder = seq_len, encoder_decoder

    def raw_length(self, d: DenoiserSection) -> int:
        m = 1 if d.mode_token else 0
        if self.encoder_decoder:
            return encoder_decoder_raw_length(d, *self.encoder_decoder, mode=m)
        return decoder_raw_length(d, self.seq_len)

    def too_short(self, d: DenoiserSection, i: int) -> str:
        """The one-line error for lengths below the denoiser's minimum (``_min_raw``)."""
        raw = _min_raw(d)
        if self.encoder_decoder:
            enc, dec = encoder_decoder_lengths(d, raw, 1 if d.mode_token else 0)
            if d.kind == "prefix":
                enc, dec = enc - raw + 2, 2  # S needs one raw token on each side
            have = f"data.inputs_len={self.encoder_decoder[0]}, data.targets_len={self.encoder_decoder[1]}"
            return f"{have} are too short for {_describe(d, i)}: it needs data.inputs_len >= {enc} and data.targets_len >= {dec}"
        need = decoder_example_length(d, raw)
        return f"data.seq_len={self.seq_len} is too short for {_describe(d, i)}: it needs data.seq_len >= {need}"

    def describe(self) -> str:
        if self.encoder_decoder:
            return f"data.inputs_len={self.encoder_decoder[0]}, data.targets_len={self.encoder_decoder[1]}"
        return f"data.seq_len={self.seq_len}"


def _check(dens: Sequence[DenoiserSection], tokenizer, fit: _Fit) -> tuple[list[int], list[list[int]]]:
    """Validate; returns (raw length, mode token ids) per denoiser."""
    if not dens:
        raise ConfigError("data.denoisers is empty; give at least one denoiser")
    weights = [float(d.weight) for d in dens]
    if any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"data.denoisers weights must be >= 0 and sum to a positive number, got {weights}")
    raws, modes = [], []
    for i, d in enumerate(dens):
        if d.kind == "prefix" and d.roll:
            raise ConfigError(f"{_describe(d, i)}: roll applies to span denoisers; S splits at a uniform point already")
        if d.kind == "span":
            if not 0 < d.noise_density < 1:
                raise ConfigError(f"{_describe(d, i)}: noise_density must be in (0, 1), got {d.noise_density:g}")
            if not d.mean_span >= 1:
                raise ConfigError(f"{_describe(d, i)}: mean_span must be >= 1, got {d.mean_span:g}")
        elif d.kind != "prefix":
            raise ConfigError(f"data.denoisers[{i}].kind must be 'span' or 'prefix', got {d.kind!r}")
        raw = fit.raw_length(d)
        if raw < _min_raw(d):
            raise ConfigError(fit.too_short(d, i))
        if d.kind == "span":
            spans = span_counts(raw, d.noise_density, d.mean_span)[1]
            try:
                tokenizer.sentinel_id(spans - 1)
            except ValueError:
                have = getattr(tokenizer, "num_sentinels", "too few")
                raise ConfigError(
                    f"{_describe(d, i)} makes up to {spans} noise spans per example at {fit.describe()} "
                    f"but data.num_sentinels={have}; set data.num_sentinels >= {spans}, lower the lengths "
                    "or raise mean_span") from None
        mode = []
        if d.mode_token:
            try:
                mode = [int(tokenizer.mode_token_id(d.mode_token))]
            except (ValueError, ConfigError) as e:
                raise ConfigError(f"{_describe(d, i)}: mode_token {d.mode_token!r}: {e}") from None
        raws.append(raw)
        modes.append(mode)
    return raws, modes


class DenoisingObjective:
    """A document -> back-to-back examples, each from a denoiser drawn by weight.

    ``encoder_decoder`` = (inputs_len, targets_len) builds encoder-decoder
    examples; None builds decoder-only (prefix-LM) examples of at most seq_len.
    """

    def __init__(self, dens: Sequence[DenoiserSection], tokenizer, seq_len: int,
                 encoder_decoder: tuple[int, int] | None = None, concat: bool = False):
        self.concat = concat  # the pipeline cuts examples from concatenated documents (ConcatExamples)
        self.denoisers = tuple(dens)
        self.raw_lengths, self._modes = _check(self.denoisers, tokenizer, _Fit(seq_len, encoder_decoder))
        w = np.asarray([d.weight for d in self.denoisers], np.float64)
        self.probs = w / w.sum()
        self.seq_len = seq_len
        self.encoder_decoder = encoder_decoder
        self.eos_id, self.bos_id = int(tokenizer.eos_id), int(tokenizer.bos_id)
        most = max((span_counts(r, d.noise_density, d.mean_span)[1] for d, r in zip(self.denoisers, self.raw_lengths)
                    if d.kind == "span"), default=0)
        self._sentinels = [int(tokenizer.sentinel_id(k)) for k in range(most)]
        self._empty = {k: np.zeros(0, v) for k, v in self._features().items()}

    def _features(self) -> dict[str, type]:
        if self.encoder_decoder:
            return {**ENCODER_DECODER_FEATURES, EXAMPLE_STARTS: np.int32, ENCODER_EXAMPLE_STARTS: np.int32}
        return {**DENOISER_FEATURES, EXAMPLE_STARTS: np.int32}

    def example(self, i: int, segment: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of denoiser i on a raw segment of length >= 2 (format-free: used by both layouts)."""
        d = self.denoisers[i]
        if d.kind == "prefix":
            return prefix_example(segment, int(rng.integers(1, len(segment))), self.eos_id)
        mask = random_spans_noise_mask(len(segment), d.noise_density, d.mean_span, rng, roll=d.roll)
        return span_corruption_example(segment, mask, self._sentinels, self.eos_id)

    def build(self, i: int, segment: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The features of denoiser i's example on a raw segment, in this objective's layout."""
        inputs, targets = self.example(i, segment, rng)
        if self.encoder_decoder:
            return encoder_decoder_example(self._modes[i], inputs, targets, i, self.bos_id, self.eos_id)
        return decoder_only_example(self._modes[i], inputs, targets, i)

    def draw(self, rng: np.random.Generator) -> int:
        """The next example's denoiser, by weight."""
        return int(rng.choice(len(self.probs), p=self.probs))

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One document's examples back to back (``data.concat_documents: false``; the module docstring)."""
        ids = np.asarray(tokens, np.int32)[1:-1]  # strip bos/eos: every example's targets end with eos
        parts, pos = [], 0
        while len(ids) - pos >= 2:
            i = self.draw(rng)
            seg = ids[pos : pos + self.raw_lengths[i]]
            pos += len(seg)
            parts.append(self.build(i, seg, rng))
        if not parts:
            return dict(self._empty)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------- concatenate-then-split


def document_tokens(tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The per-document stage of concat_documents: ids + eos (bos dropped; eos separates documents)."""
    del rng  # the examples' randomness comes from their position in the row (ConcatExamples)
    return {"tokens": np.asarray(tokens, np.int32)[1:]}


def document_stage(objective: Objective) -> Objective:
    """What the document dataset maps: the objective, or ``document_tokens`` when examples are cut later."""
    return document_tokens if getattr(objective, "concat", False) else objective


class ConcatExamples:
    """One batch row's examples, cut from its documents concatenated (T5/UL2's concatenate-then-split).

    ``docs[k]`` holds document k's ``tokens`` (ids + eos). Each example draws its denoiser, takes the
    next ``raw_lengths[i]`` tokens of the row's stream (across documents) and builds its features, so
    span statistics do not depend on document lengths. The position (doc, offset) -- document k and
    tokens of it already used -- is the whole state: an example's randomness comes from (seed, row,
    doc, offset), so restoring the two integers continues exactly. At the end of a finite stream the
    last piece is shorter (the count rules apply to its own length); a final single token is dropped.
    The packers read it through ``peek`` (packing.py, pair_packing.py).
    """

    def __init__(self, docs: Sequence[Mapping[str, np.ndarray]], objective: DenoisingObjective, *, seed: int,
                 row: int, finite: bool):
        self._docs, self.objective = docs, objective
        self._key = (int(seed), int(row))
        self._end = len(docs) if finite else None
        self._tokens: dict[int, np.ndarray] = {}  # the documents the current example spans
        self._peeked: tuple | None = None  # ((doc, offset), result): a packer peeks again when a row is full

    def __len__(self) -> int:
        return len(self._docs)

    def peek(self, doc: int, offset: int) -> tuple[dict[str, np.ndarray], tuple[int, int]] | None:
        """(the example at (doc, offset), the position after it); None when a finite stream has run out."""
        if self._peeked is not None and self._peeked[0] == (doc, offset):
            return self._peeked[1]
        self._tokens = {k: v for k, v in self._tokens.items() if k >= doc}
        rng = np.random.default_rng([*self._key, doc, offset])
        i = self.objective.draw(rng)
        want, pieces, k, o = self.objective.raw_lengths[i], [], doc, offset
        while want > 0 and (self._end is None or k < self._end):
            tokens = self._document(k)
            piece = tokens[o : o + want]
            pieces.append(piece)
            want, o = want - len(piece), o + len(piece)
            if o >= len(tokens):
                k, o = k + 1, 0
        segment = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        out = (self.objective.build(i, segment, rng), (k, o)) if len(segment) >= 2 else None
        self._peeked = ((doc, offset), out)
        return out

    def _document(self, k: int) -> np.ndarray:
        if k not in self._tokens:
            self._tokens[k] = np.asarray(self._docs[k]["tokens"], np.int32)
        return self._tokens[k]


def _denoising(dens_of: Callable[[DataSection], Sequence[DenoiserSection]]):
    def build(data: DataSection, tokenizer, seq_len: int, encoder_decoder=None) -> DenoisingObjective:
        return DenoisingObjective(dens_of(data), with_sentinels(tokenizer, data.num_sentinels), seq_len,
                                  encoder_decoder, concat=data.concat_documents)
    return build


def check_sentinels_fit(data: DataSection, tokenizer, model_vocab: int, vocab_key: str = "model.vocab_size") -> None:
    """Sentinels must be ids the model embeds, above the tokenizer's ordinary ids (ConfigError, one line).

    ``model_vocab`` is the embedding table's size. More sentinels than fit would overlap ordinary ids
    (what T5's code silently does past its 100 extra ids) or fall outside the embedding table.
    """
    n = data.num_sentinels
    ordinary = tokenizer.vocab_size - tokenizer.num_sentinels
    if ordinary + n > model_vocab:
        raise ConfigError(
            f"data.num_sentinels={n} does not fit the model vocabulary of {model_vocab} ids ({vocab_key}): "
            f"the tokenizer's {ordinary} ordinary ids leave room for {max(model_vocab - ordinary, 0)} sentinels "
            f"at the top, more would overlap ordinary ids; lower data.num_sentinels or raise {vocab_key} "
            f"to at least {ordinary + n}")


def _causal(data: DataSection, tokenizer, seq_len: int, encoder_decoder=None) -> Objective:
    if encoder_decoder:
        raise ConfigError("data.objective=causal_lm has no inputs for an encoder; with model.kind=encoder_decoder "
                          "use span_corruption, prefix_lm or ul2")
    return causal_lm


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "causal_lm": _causal,
    "prefix_lm": _denoising(lambda data: PREFIX_LM),
    "span_corruption": _denoising(lambda data: SPAN_CORRUPTION),
    "ul2": _denoising(denoisers),
}


def make_objective(data: DataSection, tokenizer, seq_len: int | None = None, *,
                   encoder_decoder: bool = False) -> Objective:
    """The (tokens, rng) -> features function for data.objective; ConfigError on a bad setup.

    encoder_decoder: build encoder-decoder examples sized by data.inputs_len / data.targets_len
    (each 0 meaning data.seq_len) instead of decoder-only ones of seq_len.
    """
    if data.objective not in OBJECTIVES:
        raise ConfigError(f"unknown data.objective {data.objective!r}; valid choices: {', '.join(sorted(OBJECTIVES))}")
    if data.denoisers and data.objective != "ul2":
        raise ConfigError(f"data.denoisers is only used by data.objective=ul2 (this run has {data.objective!r})")
    seq_len = data.seq_len if seq_len is None else seq_len
    lengths = encoder_decoder_lengths_of(data) if encoder_decoder else None
    return OBJECTIVES[data.objective](data, tokenizer, seq_len, lengths)


def example_features(features: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Split one document's output back into its examples (by ``example_starts``, and for the
    encoder-decoder the encoder's own ``encoder_example_starts``)."""
    def bounds(starts):
        at = list(np.flatnonzero(starts)) + [len(starts)]
        return list(zip(at[:-1], at[1:]))

    dec = bounds(features[EXAMPLE_STARTS])
    enc = bounds(features[ENCODER_EXAMPLE_STARTS]) if ENCODER_EXAMPLE_STARTS in features else None
    out = []
    for i, (a, b) in enumerate(dec):
        ex = {}
        for k, v in features.items():
            lo, hi = enc[i] if enc is not None and (k.startswith("encoder_")) else (a, b)
            ex[k] = v[lo:hi]
        out.append(ex)
    return out

"""Text in, numbers out: what lm-eval's three request types ask of a model, answered by pretrax alone.

The lm-eval adapter (lm_adapter.py) and the zero-shot probes (probes.py) both call these, so a task's
score and a probe's score mean the same thing, and neither needs lm-eval to be checked. Text is formed
as training forms it, as `pretrax score` forms it:

- decoder-only: a document starts with bos; a continuation is scored given bos + context (when the two
  do not fit the window the context keeps its newest tokens), as ``pretrax score --ids``;
- encoder-decoder: the encoder reads [mode] + context + eos and the decoder scores the continuation from
  bos, as ``pretrax score --inputs C --targets X --no-eos --mode M``; the mode is the run's S (prefix)
  denoiser's mode token when it has one (what `pretrax generate` uses), so a UL2 model is asked to continue.

Scoring is batched (`batch_token_logprobs`, `batch_target_logprobs`: many rows per pass, split over the
mesh's batch axes); generation is one request at a time over the KV cache, greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pretrax.errors import ConfigError
from pretrax.models.family import family_of
from pretrax.sizes import encoder_decoder_lengths, window


@dataclass(frozen=True)
class Model:
    """A model to evaluate: in-memory parameters (a training run's, or a checkpoint's) and its tokenizer."""

    setup: Any
    params: Any
    tokenizer: Any
    mode_ids: tuple[int, ...] = ()  # encoder-decoder: the mode token put before every context
    batch_size: int = 8

    @property
    def encoder_decoder(self) -> bool:
        return family_of(self.setup.cfg.model).has_encoder


def model_of(setup, params: Any, tokenizer, *, batch_size: int = 8, mode: str | None = "default") -> Model:
    """A Model over a text tokenizer. mode: "default" (the run's S denoiser's mode token, encoder-decoders
    only), None (no mode token), or R, S, X or a mode token."""
    from pretrax.generate import MODE_TOKENS, default_mode

    if tokenizer is None or getattr(tokenizer, "ids_only", False):
        raise ConfigError("evaluation reads text and this run has no tokenizer (data.tokenizer: none, as after "
                          "`pretrax import` without one); give the run a tokenizer (data.tokenizer=bytes or a "
                          ".model whose ids fit) to evaluate it")
    if mode == "default":
        mode = default_mode(setup.cfg) if family_of(setup.cfg.model).has_encoder else None
    mode_ids = () if mode is None else (int(tokenizer.mode_token_id(MODE_TOKENS.get(mode, mode))),)
    return Model(setup, params, tokenizer, mode_ids, batch_size)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids): the continuation's ids are the whole text's after the context's,
    with the context's trailing spaces moved onto the continuation (as lm-eval's own models do), so a
    subword tokenizer scores the pieces it would actually produce."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx, whole = tokenizer.encode(context), tokenizer.encode(context + continuation)
    if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary: score the pieces separately
        return ctx, tokenizer.encode(continuation)
    return ctx, whole[len(ctx):]


def loglikelihoods(model: Model, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """(log p(continuation | context), whether greedy decoding gives the continuation) per (context,
    continuation) pair: lm-eval's `loglikelihood`."""
    return token_loglikelihoods(model, [encode_pair(model.tokenizer, c, x) for c, x in pairs])


def token_loglikelihoods(model: Model, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """loglikelihoods over ids: each pair's context ids are the text's (bos or mode and eos are added here);
    an empty continuation has log-probability 0 and is greedy."""
    from pretrax.score import batch_target_logprobs, batch_token_logprobs

    scored_at = [i for i, (_, cont) in enumerate(pairs) if cont]
    if len(scored_at) < len(pairs):
        out = [(0.0, True)] * len(pairs)
        for i, result in zip(scored_at, token_loglikelihoods(model, [pairs[i] for i in scored_at])):
            out[i] = result
        return out
    tok, setup = model.tokenizer, model.setup
    if model.encoder_decoder:
        inputs_len, targets_len = _encoder_decoder_lengths(setup)
        keep = inputs_len - len(model.mode_ids) - 1  # room for the context between the mode token and eos
        rows = [(list(model.mode_ids) + (ctx[-keep:] if keep > 0 else []) + [tok.eos_id],
                 _fitting(cont, targets_len, "data.targets_len")) for ctx, cont in pairs]
        scored = batch_target_logprobs(setup, model.params, rows, bos_id=tok.bos_id, batch_size=model.batch_size)
        return [(float(lp.sum()), bool(greedy.all())) for lp, greedy in scored]
    window = _window(setup)
    rows = [([tok.bos_id] + ctx + _fitting(cont, window - 1, "the model's window less one"))[-window:]
            for ctx, cont in pairs]
    scored = batch_token_logprobs(setup, model.params, rows, batch_size=model.batch_size)
    return [(float(lp[len(lp) - len(cont):].sum()), bool(greedy[len(lp) - len(cont):].all()))
            for (lp, greedy), (_, cont) in zip(scored, pairs)]


def rolling_loglikelihoods(model: Model, texts: list[str]) -> list[float]:
    """log p(text) of each whole text, scored in pieces that fit the model, each with as much of the text
    before it as context as fits (at least half the window): lm-eval's `loglikelihood_rolling`. A text that
    fits is one piece: the sum of `pretrax score --text TEXT --no-eos` (decoder-only)."""
    pieces, owner = [], []
    for n, text in enumerate(texts):
        ids = model.tokenizer.encode(text)
        for piece in _rolling_pieces(model, ids):
            pieces.append(piece)
            owner.append(n)
    totals = [0.0] * len(texts)
    for n, (lp, _) in zip(owner, token_loglikelihoods(model, pieces)):
        totals[n] += lp
    return totals


def _rolling_pieces(model: Model, ids: list[int]) -> list[tuple[list[int], list[int]]]:
    """(context ids, ids scored) pieces covering every id once. Decoder-only: the window holds bos or
    context plus the piece; encoder-decoder: the encoder reads the text before the piece."""
    if model.encoder_decoder:
        inputs_len, first = _encoder_decoder_lengths(model.setup)
        context_room = inputs_len - len(model.mode_ids) - 1
    else:
        first = _window(model.setup) - 1  # after bos
        context_room = first
    step = max(first // 2, 1) if not model.encoder_decoder else first
    pieces, start = [], 0
    while start < len(ids):
        end = min(len(ids), start + (first if start == 0 else step))
        context = ids[max(0, start - context_room): start] if start else []
        pieces.append((context, ids[start:end]))
        start = end
    return pieces


def generate_until(model: Model, context: str, until: list[str], max_new_tokens: int) -> str:
    """Greedy continuation of context, cut before the first of the until strings (or at eos, or after
    max_new_tokens): lm-eval's `generate_until`. Decoding stops as soon as an until string appears."""
    from pretrax.generate import decoder_steps, encoder_decoder_steps

    tok, setup, ctx = model.tokenizer, model.setup, model.tokenizer.encode(context)
    if model.encoder_decoder:
        inputs_len, _ = _encoder_decoder_lengths(setup)
        keep = inputs_len - len(model.mode_ids) - 1
        steps = encoder_decoder_steps(setup, model.params, list(model.mode_ids) + ctx[-keep:] + [tok.eos_id],
                                      bos_id=tok.bos_id, pad_id=tok.pad_id)
    else:
        steps = decoder_steps(setup, model.params, [tok.bos_id] + ctx, pad_id=tok.pad_id)
    new: list[int] = []
    for token, _ in steps:
        if token == tok.eos_id or len(new) >= max_new_tokens:
            break
        new.append(token)
        text = tok.decode(new)
        if any(u and u in text for u in until):
            break
    text = tok.decode(new)
    cut = min([text.index(u) for u in until if u and u in text], default=len(text))
    return text[:cut]


def _fitting(ids: list[int], most: int, limit: str) -> list[int]:
    if len(ids) > most:
        raise ConfigError(f"a continuation of {len(ids)} tokens is longer than {limit} ({most} tokens); "
                          "this model cannot score it")
    return ids


def _window(setup) -> int:
    return window(setup.cfg)


def _encoder_decoder_lengths(setup) -> tuple[int, int]:
    return encoder_decoder_lengths(setup.cfg.data)

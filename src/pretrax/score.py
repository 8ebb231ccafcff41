"""Scoring: the log-probability a run's model gives each token of a sequence given what precedes it.

`token_logprobs` (decoder-only) and `target_logprobs` (encoder-decoder) are the library functions
evaluation builds on: one forward pass, the sequence padded to the model's window so that every
length shares one compilation; `batch_token_logprobs` and `batch_target_logprobs` are their batched
forms for evaluation (many sequences per pass, rows split over the mesh's batch axes, and whether each
token is the model's greedy choice). `score_run` turns `pretrax score`'s arguments into ids formed as
training forms them (a document is bos + ids + eos; an encoder-decoder example is
[mode] + inputs + eos for the encoder and targets + eos for the decoder, which starts from bos),
and `format_table` prints the result.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data.tokenizer import ByteTokenizer
from pretrax.errors import ConfigError
from pretrax.models.family import family_of
from pretrax.sizes import encoder_decoder_lengths, window as max_positions


def token_logprobs(setup, params: Any, ids: list[int]) -> np.ndarray:
    """log p(ids[i+1] | ids[:i+1]) for i < len(ids) - 1 (float32, len(ids) - 1 values), decoder-only."""
    window = max_positions(setup.cfg)
    _check(ids, 2, window, "the sequence", "the model's window (model.max_seq_len, or data.seq_len when 0)", setup)
    tokens = _padded(ids, window)
    targets = _padded(ids[1:], window)  # targets[i] = ids[i + 1]; the padding after is never read back
    return np.asarray(_decoder_logprobs(setup.graphdef, params, tokens, targets))[: len(ids) - 1]


def target_logprobs(setup, params: Any, input_ids: list[int], target_ids: list[int], *, bos_id: int) -> np.ndarray:
    """log p(target_ids[i] | input_ids, target_ids[:i]) for every i (float32), encoder-decoder: the encoder
    reads input_ids as given, the decoder reads bos_id + target_ids[:-1] (training's shift right)."""
    inputs_len, targets_len = encoder_decoder_lengths(setup.cfg.data)
    _check(input_ids, 1, inputs_len, "the inputs", "data.inputs_len", setup)
    _check(target_ids, 1, targets_len, "the targets", "data.targets_len", setup)
    enc_segments = jnp.asarray(np.arange(inputs_len) < len(input_ids), jnp.int32)  # 0: padding, never read
    dec_segments = jnp.asarray(np.arange(targets_len) < len(target_ids), jnp.int32)
    lp = _encoder_decoder_logprobs(setup.graphdef, params, _padded(input_ids, inputs_len), enc_segments,
                                   _padded([bos_id] + target_ids[:-1], targets_len), dec_segments,
                                   _padded(target_ids, targets_len))
    return np.asarray(lp)[: len(target_ids)]


def batch_token_logprobs(setup, params: Any, seqs: list[list[int]], *, batch_size: int = 8
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """token_logprobs for many sequences, batch_size rows per forward pass with the rows split over the
    mesh's batch axes: per sequence (logprobs, greedy), each len(seq) - 1 values; greedy[i] says whether
    ids[i + 1] is the model's most likely next token (what lm-eval's is_greedy needs)."""
    window = max_positions(setup.cfg)
    for ids in seqs:
        _check(ids, 2, window, "the sequence", "the model's window (model.max_seq_len, or data.seq_len when 0)",
               setup)
    out, n = [], _rows_per_batch(setup, batch_size)
    for rows in _chunks(seqs, n):
        tokens, targets = _padded_rows(rows, window), _padded_rows([ids[1:] for ids in rows], window)
        lp, greedy = map(np.asarray, _decoder_batch(setup.graphdef, params, *_on_batch_axes(setup, n, tokens, targets),
                                                    replicated=_replicated(setup)))
        out += [(lp[r, : len(ids) - 1], greedy[r, : len(ids) - 1]) for r, ids in enumerate(rows)]
    return out


def batch_target_logprobs(setup, params: Any, pairs: list[tuple[list[int], list[int]]], *, bos_id: int,
                          batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """target_logprobs for many (input_ids, target_ids) pairs, batched and sharded as batch_token_logprobs:
    per pair (logprobs, greedy), each len(target_ids) values."""
    inputs_len, targets_len = encoder_decoder_lengths(setup.cfg.data)
    for enc, dec in pairs:
        _check(enc, 1, inputs_len, "the inputs", "data.inputs_len", setup)
        _check(dec, 1, targets_len, "the targets", "data.targets_len", setup)
    out, n = [], _rows_per_batch(setup, batch_size)
    for rows in _chunks(pairs, n):
        encs, decs = [enc for enc, _ in rows], [dec for _, dec in rows]
        arrays = (_padded_rows(encs, inputs_len), _segments(encs, inputs_len),
                  _padded_rows([[bos_id] + dec[:-1] for dec in decs], targets_len), _segments(decs, targets_len),
                  _padded_rows(decs, targets_len))
        lp, greedy = map(np.asarray, _encoder_decoder_batch(setup.graphdef, params, *_on_batch_axes(setup, n, *arrays),
                                                            replicated=_replicated(setup)))
        out += [(lp[r, : len(dec)], greedy[r, : len(dec)]) for r, dec in enumerate(decs)]
    return out


def _rows_per_batch(setup, batch_size: int) -> int:
    """batch_size rounded up to a multiple of the ways the mesh splits a batch, so every shard gets rows."""
    ways = setup.mesh.size // _batch_sharding(setup).shard_shape((setup.mesh.size, 1))[0]
    return -(-max(batch_size, 1) // ways) * ways


def _batch_sharding(setup):
    from pretrax.parallel.rules import batch_sharding

    return batch_sharding(setup.mesh, dict(setup.cfg.mesh.rules))


def _replicated(setup):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(setup.mesh, PartitionSpec())


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i: i + n]


def _padded_rows(rows: list[list[int]], length: int) -> np.ndarray:
    """(len(rows), length) int32: each row's ids, then zeros (positions the caller never reads back)."""
    buf = np.zeros((len(rows), length), np.int32)
    for r, ids in enumerate(rows):
        buf[r, : len(ids)] = ids
    return buf


def _segments(rows: list[list[int]], length: int) -> np.ndarray:
    """(len(rows), length) int32: 1 over each row's ids, 0 over its padding (never attended)."""
    return (np.arange(length)[None] < np.asarray([len(r) for r in rows])[:, None]).astype(np.int32)


def _on_batch_axes(setup, rows: int, *arrays: np.ndarray) -> list[jax.Array]:
    """Each (b, T) array filled to `rows` rows with copies of its first (one shape for every batch: one
    compilation; no all-padding row), then split over the mesh's batch axes."""
    sharding = _batch_sharding(setup)
    return [jax.device_put(np.concatenate([a, np.repeat(a[:1], rows - len(a), 0)]), sharding) for a in arrays]


@functools.partial(jax.jit, static_argnames=("graphdef", "replicated"))
def _decoder_batch(graphdef, params, tokens, targets, replicated):
    logits = nnx.merge(graphdef, params)(tokens)  # (B, T, V); causal: the padding after a row is unseen
    return _scored(logits, targets, replicated)


@functools.partial(jax.jit, static_argnames=("graphdef", "replicated"))
def _encoder_decoder_batch(graphdef, params, enc, enc_segments, dec, dec_segments, targets, replicated):
    logits = nnx.merge(graphdef, params)(enc, dec, encoder_segment_ids=enc_segments, decoder_segment_ids=dec_segments)
    return _scored(logits, targets, replicated)


def _scored(logits: jax.Array, targets: jax.Array, replicated) -> tuple[jax.Array, jax.Array]:
    """(log-probabilities (B, T), greedy (B, T)), gathered onto every device (replicated) so that every
    process can read them back, as a multi-host run needs."""
    out = jax.vmap(_picked)(logits, targets), jnp.argmax(logits, -1) == targets
    return jax.lax.with_sharding_constraint(out, replicated)


def _check(ids: list[int], least: int, most: int, what: str, limit: str, setup) -> None:
    if len(ids) > most:
        raise ConfigError(f"{what} is {len(ids)} tokens, longer than {limit} = {most} tokens this model reads; "
                          "give a shorter sequence")
    if len(ids) < least:
        raise ConfigError(f"{what} needs at least {least} token{'s' * (least > 1)}, got {len(ids)}")
    bad = [i for i in ids if not 0 <= i < setup.vocab_size]
    if bad:
        raise ConfigError(f"token id {bad[0]} in {what} is outside the model's vocabulary (0..{setup.vocab_size - 1})")


def _padded(ids: list[int], length: int) -> jax.Array:
    buf = np.zeros((length,), np.int32)
    buf[: len(ids)] = ids
    return jnp.asarray(buf)


def _picked(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log_softmax(logits)[t, targets[t]]: (T, V), (T,) -> (T,) float32."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), targets[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames="graphdef")
def _decoder_logprobs(graphdef, params, tokens, targets):
    return _picked(nnx.merge(graphdef, params)(tokens[None])[0], targets)  # causal: padding after is unseen


@functools.partial(jax.jit, static_argnames="graphdef")
def _encoder_decoder_logprobs(graphdef, params, enc, enc_segments, dec, dec_segments, targets):
    logits = nnx.merge(graphdef, params)(enc[None], dec[None], encoder_segment_ids=enc_segments[None],
                                         decoder_segment_ids=dec_segments[None])[0]
    return _picked(logits, targets)


# ---------------------------------------------------------------- the command


def parse_ids(text: str, flag: str) -> list[int]:
    """'5,17,9' (commas or spaces) -> [5, 17, 9]; anything else is a one-line error naming the flag."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{flag} takes token ids such as 5,17,9, got {text[:40]!r}") from None


def _encode(tokenizer, text: str, flag: str, ids_flag: str, *, eos: bool) -> list[int]:
    """text's ids, then eos when asked; a run without a tokenizer takes ids only."""
    if tokenizer is None or getattr(tokenizer, "ids_only", False):
        raise ConfigError(f"{flag} needs a tokenizer and this run has none (data.tokenizer: none); "
                          f"give token ids with {ids_flag} 5,17,9")
    return list(tokenizer.encode(text)) + ([tokenizer.eos_id] if eos else [])


def score_run(setup, params: Any, tokenizer, *, text: str | None = None, ids: str | None = None,
              inputs: str | None = None, targets: str | None = None, input_ids: str | None = None,
              target_ids: str | None = None, mode: str | None = None, eos: bool = True) -> dict:
    """`pretrax score`: {"ids", "logprobs"} (decoder-only; logprobs[i] scores ids[i + 1]) or {"input_ids",
    "target_ids", "logprobs"} (encoder-decoder; logprobs[i] scores target_ids[i]).

    Text is tokenized as training forms it: --text as a document (bos + text + eos), --inputs as the
    encoder's ([mode] + inputs + eos), --targets as the decoder's targets (targets + eos); eos=False
    leaves the scored sequence's eos off. Ids (--ids, --input-ids, --target-ids) are used as given.
    """
    encoder_decoder = family_of(setup.cfg.model).has_encoder
    given = {f: v is not None for f, v in (("--text", text), ("--ids", ids), ("--inputs", inputs),
                                           ("--targets", targets), ("--input-ids", input_ids),
                                           ("--target-ids", target_ids))}
    mine = ("--inputs", "--targets", "--input-ids", "--target-ids") if encoder_decoder else ("--text", "--ids")
    others = [f for f, g in given.items() if g and f not in mine]
    kind = "an encoder-decoder" if encoder_decoder else "a decoder-only model"
    if others:
        want = "--inputs or --input-ids, and --targets or --target-ids" if encoder_decoder else "--text or --ids"
        raise ConfigError(f"{others[0]} does not apply to this run ({kind}); it takes {want}")
    if not encoder_decoder:
        if given["--text"] == given["--ids"]:
            raise ConfigError("give the sequence to score with exactly one of --text TEXT or --ids 5,17,9")
        if mode is not None:
            raise ConfigError("--mode formats an encoder-decoder's --inputs; a decoder-only run scores --text as "
                              "a document")
        if text is not None:
            body = _encode(tokenizer, text, "--text", "--ids", eos=eos)
            seq = [tokenizer.bos_id] + body  # a document as training forms it: bos + ids + eos
        else:
            seq = parse_ids(ids, "--ids")
        return {"ids": seq, "logprobs": token_logprobs(setup, params, seq).tolist()}
    if given["--inputs"] == given["--input-ids"] or given["--targets"] == given["--target-ids"]:
        raise ConfigError("an encoder-decoder scores targets given inputs: give one of --inputs TEXT or "
                          "--input-ids 5,17,9 and one of --targets TEXT or --target-ids 5,17,9")
    if mode is not None and inputs is None:
        raise ConfigError("--mode formats --inputs text; with --input-ids give the mode token's id first")
    if inputs is not None:
        from pretrax.generate import MODE_TOKENS

        body = _encode(tokenizer, inputs, "--inputs", "--input-ids", eos=True)
        enc = ([] if mode is None else [int(tokenizer.mode_token_id(MODE_TOKENS.get(mode, mode)))]) + body
    else:
        enc = parse_ids(input_ids, "--input-ids")
    dec = (_encode(tokenizer, targets, "--targets", "--target-ids", eos=eos) if targets is not None
           else parse_ids(target_ids, "--target-ids"))
    bos = ByteTokenizer.bos_id if tokenizer is None else tokenizer.bos_id  # None: pretrax's own id layout
    lp = target_logprobs(setup, params, enc, dec, bos_id=bos)
    return {"input_ids": enc, "target_ids": dec, "logprobs": lp.tolist()}


def _piece(tokenizer, i: int) -> str:
    specials = {tokenizer.pad_id: "<pad>", tokenizer.eos_id: "<eos>", tokenizer.bos_id: "<bos>"}
    return specials.get(i) or repr(tokenizer.decode([i]))


def format_table(result: dict, tokenizer) -> str:
    """One row per token (position, id, its text when the run has a tokenizer, log-probability),
    then the total and the mean in nats."""
    pieces = tokenizer is not None and not getattr(tokenizer, "ids_only", False)

    def row(pos: int, i: int, logprob: str) -> str:
        return f"{pos:>5} {i:>7}  {_piece(tokenizer, i) if pieces else '':<14} {logprob:>10}"

    lines = [f"{'pos':>5} {'id':>7}  {'token' if pieces else '':<14} {'logprob':>10}"]
    if "target_ids" in result:
        lines.insert(0, f"inputs: {len(result['input_ids'])} tokens; each target scored given them and the "
                        "targets before it")
        scored = list(enumerate(result["target_ids"]))
    else:
        lines.append(row(0, result["ids"][0], "-"))  # the first token: nothing before it to score it by
        scored = list(enumerate(result["ids"][1:], start=1))
    lines += [row(pos, i, f"{lp:.4f}") for (pos, i), lp in zip(scored, result["logprobs"])]
    total = float(np.sum(result["logprobs"]))
    mean = total / len(scored)
    lines.append(f"total {total:.4f} nats over {len(scored)} tokens; mean {mean:.4f} "
                 f"(perplexity {math.exp(-mean):.2f})")
    return "\n".join(lines)

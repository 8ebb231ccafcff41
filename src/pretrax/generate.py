"""Sampling from a trained run: temperature, top-k and top-p (nucleus).

By default with a KV cache (the model's `decode_step`, models/kv_cache.py): the prompt
is filled in one pass, then each new token is one jitted call over a preallocated,
fixed-shape cache, so nothing recompiles while sampling. ``cache=False`` (``pretrax
generate --no-cache``) is the reference: every token runs the whole model over a
fixed-size window again. The jitted functions are made once per model graph and sampling
setting (`_jitted`), so a second sample from the same model compiles nothing.
"""

from __future__ import annotations

import functools
import itertools
import shlex
import sys
import types
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax import config as config_lib
from pretrax import storage
from pretrax.errors import CheckpointError, ConfigError
from pretrax.models.family import family_of
from pretrax.train import checkpoint as ckpt
from pretrax.sizes import encoder_decoder_lengths, window as max_positions


MODE_TOKENS = {"R": "[NLU]", "S": "[S2S]", "X": "[NLG]"}  # UL2's paradigm tokens


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Scale by temperature, keep the top_k largest and the smallest set with mass >= top_p."""
    logits = logits / max(temperature, 1e-6)
    if top_k > 0:
        kth = jnp.sort(logits)[-min(top_k, logits.shape[-1])]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits)
        probs = jax.nn.softmax(logits[order])
        before = jnp.cumsum(probs) - probs  # mass of strictly more likely tokens
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def default_mode(cfg) -> str | None:
    """The mode a run samples with when none is given: its S (prefix) denoiser's mode token, if it has one.

    A UL2 model never saw a bare document start; [S2S] + prompt is the continuation task it was trained on.
    """
    from pretrax.data.objectives import denoisers

    return next((d.mode_token or None for d in denoisers(cfg.data) if d.kind == "prefix"), None)


Choice = tuple  # (temperature, top_k, top_p); `_jitted` makes one set of sampling steps per setting


def _choose(logits: jax.Array, key, choice: Choice) -> jax.Array:
    """The next token from float32 logits (V,): greedy at temperature 0, else a filtered sample."""
    temperature, top_k, top_p = choice
    if temperature == 0:
        return jnp.argmax(logits)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p))


def _mode_id(tokenizer, mode: str) -> int:
    return int(tokenizer.mode_token_id(MODE_TOKENS.get(mode, mode)))


def sample(
    setup,
    params: Any,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.95,
    seed: int = 0,
    mode: str | None = None,
    cache: bool = True,
) -> str:
    """The continuation of prompt (text only, without the prompt).

    Decoder-only: mode (R, S or X, or a mode token such as "[S2S]") formats
    the prompt as a UL2 example's inputs, mode token first, attended
    bidirectionally, as the decoder-only UL2 format trains it; None: a plain
    document start (bos). Encoder-decoder: the encoder reads [mode] + prompt +
    eos (no mode token when None) and the decoder writes from bos, as the
    encoder-decoder format trains it (``--mode S`` asks a UL2 model to continue).
    cache: decode with the KV cache (False: recompute the window for every token).
    """
    kw = dict(max_new_tokens=max_new_tokens, choice=(temperature, top_k, top_p), seed=seed, stop_id=tokenizer.eos_id,
              pad_id=tokenizer.pad_id, cache=cache)
    mode_ids = [] if mode is None else [_mode_id(tokenizer, mode)]
    if family_of(setup.cfg.model).has_encoder:  # the prompt is the encoder's input; the decoder writes from bos
        return tokenizer.decode(encoder_decoder_new_ids(setup, params, mode_ids + tokenizer.encode(prompt)
                                                        + [tokenizer.eos_id], bos_id=tokenizer.bos_id, **kw))
    ids = (mode_ids or [tokenizer.bos_id]) + tokenizer.encode(prompt)
    return tokenizer.decode(decoder_new_ids(setup, params, ids, prefix=len(ids) if mode_ids else 0, **kw))


def decoder_new_ids(setup, params: Any, ids: list[int], *, max_new_tokens: int, stop_id: int | None = None,
                    **kw) -> list[int]:
    """Up to max_new_tokens ids continuing ids from a decoder-only model, stopping before stop_id;
    kw as decoder_steps (prefix, choice, seed, pad_id, cache)."""
    return _take(decoder_steps(setup, params, ids, **kw), max_new_tokens, stop_id)


def encoder_decoder_new_ids(setup, params: Any, encoder_ids: list[int], *, max_new_tokens: int,
                            stop_id: int | None = None, **kw) -> list[int]:
    """Up to min(max_new_tokens, data.targets_len) decoder ids for the encoder's ids, stopping before
    stop_id; kw as encoder_decoder_steps (bos_id, choice, seed, pad_id, cache)."""
    return _take(encoder_decoder_steps(setup, params, encoder_ids, **kw), max_new_tokens, stop_id)


def _take(steps: Iterator[tuple[int, jax.Array]], n: int, stop_id: int | None) -> list[int]:
    new = []
    for token, _ in itertools.islice(steps, n):
        if token == stop_id:
            break
        new.append(token)
    return new


def decoder_steps(setup, params: Any, ids: list[int], *, prefix: int = 0, choice: Choice = (0.0, 0, 1.0),
                  seed: int = 0, pad_id: int = 0, cache: bool = True) -> Iterator[tuple[int, jax.Array]]:
    """(token, the float32 logits (V,) it was chosen from) for each new position after ids, without end.

    prefix: the first `prefix` ids are attended bidirectionally (a prefix-LM prompt; it must fit the
    window). The context is the newest max_positions(cfg) ids. With the cache, once the window is full
    the cache is filled again from the newest half of it (the recompute path slides the window by one
    token instead, so past the window the two differ).
    """
    window = max_positions(setup.cfg)
    if prefix >= window:
        raise ConfigError(f"the prompt ({prefix} tokens with its mode token) does not fit the {window}-token window")
    f, key, new, filled, kv = _jitted(setup.graphdef, choice), jax.random.key(seed), [], 0, None
    for i in itertools.count():
        if not cache:
            context = (ids + new)[-window:]
            bidirectional = jnp.asarray(np.arange(window) < prefix, jnp.int32)
            token, logits = f.recompute(params, _padded(context, window, pad_id), bidirectional, len(context), key, i)
        elif kv is None or filled == window:  # the prompt, or a full cache: fill it in one pass
            context = (ids + new)[-(window if kv is None else max(window // 2, 1)):]
            token, logits, kv = f.prefill(params, _padded(context, window, pad_id), len(context),
                                          prefix if kv is None else 0, key, i)
            filled = len(context)
        else:  # one token: the one just chosen (still on the device), at the next free position
            token, logits, kv = f.step(params, token, kv, filled, key, i)
            filled += 1
        new.append(int(token))
        yield new[-1], logits


def encoder_decoder_steps(setup, params: Any, encoder_ids: list[int], *, bos_id: int,
                          choice: Choice = (0.0, 0, 1.0), seed: int = 0, pad_id: int = 0,
                          cache: bool = True) -> Iterator[tuple[int, jax.Array]]:
    """(token, its float32 logits (V,)) for each decoder position, data.targets_len of them: the
    encoder's ids encoded once, the decoder started from bos_id, over the KV cache or (cache False)
    over the whole targets_len window per token."""
    inputs_len, targets_len = encoder_decoder_lengths(setup.cfg.data)
    if len(encoder_ids) > inputs_len:
        raise ConfigError(f"the prompt ({len(encoder_ids)} encoder tokens with mode token and eos) does not fit "
                          f"data.inputs_len={inputs_len}")
    enc = _padded(encoder_ids, inputs_len, pad_id)[None]
    segments = jnp.asarray(np.arange(inputs_len) < len(encoder_ids), jnp.int32)[None]  # padding: 0, never read
    f, key, token = _jitted(setup.graphdef, choice), jax.random.key(seed), jnp.asarray(bos_id, jnp.int32)
    if cache:
        kv = f.encoder_decoder_cache(params, enc, segments, targets_len)
    else:
        encoded = f.encode(params, enc, segments)
        dec = np.full((targets_len,), pad_id, np.int32)
    for i in range(targets_len):
        if cache:
            token, logits, kv = f.step(params, token, kv, i, key, i)
        else:
            dec[i] = token
            token, logits = f.encoder_decoder_next(params, encoded, segments, jnp.asarray(dec), i + 1, key, i)
        yield int(token), logits


def _padded(ids: list[int], length: int, pad_id: int) -> jax.Array:
    buf = np.full((length,), pad_id, np.int32)
    buf[: len(ids)] = ids
    return jnp.asarray(buf)


@functools.lru_cache(maxsize=8)
def _jitted(graphdef, choice: Choice) -> types.SimpleNamespace:
    """The jitted sampling functions of one model graph and one sampling setting, made once. They close
    over both rather than taking them as static arguments: hashing a graphdef walks the whole model,
    which would cost more than a small model's decoding step on every token. Each picks its token
    with the key folded with the step number i, the same on every path."""

    def pick(logits, key, i):
        return _choose(logits, jax.random.fold_in(key, i), choice), logits

    def recompute(params, tokens, bidirectional, length, key, i):
        """The reference: the whole window (T,) through the model again, the logits at length - 1."""
        logits = nnx.merge(graphdef, params)(tokens[None], bidirectional=bidirectional[None])[0, length - 1]
        return pick(logits, key, i)

    def prefill(params, tokens, length, prefix, key, i):
        """A fresh cache filled with tokens (T,) (a prompt padded to the window) in one pass."""
        model = nnx.merge(graphdef, params)
        logits, cache = model.decode_step(tokens[None], model.init_cache(1, tokens.shape[0]), start=0, prefix=prefix)
        return *pick(logits[0, length - 1], key, i), cache

    def step(params, token, cache, position, key, i):
        """One token at `position`, its keys and values written into the (donated) cache in place."""
        logits, cache = nnx.merge(graphdef, params).decode_step(token.reshape(1, 1), cache, start=position)
        return *pick(logits[0, 0], key, i), cache

    def encoder_decoder_cache(params, tokens, segments, length):
        model = nnx.merge(graphdef, params)
        return model.init_cache(model.encode(tokens, segment_ids=segments), length, segments)

    def encode(params, tokens, segments):
        return nnx.merge(graphdef, params).encode(tokens, segment_ids=segments)

    def encoder_decoder_next(params, encoded, segments, tokens, length, key, i):
        """The reference: the decoder over its whole window (T,) again, the logits at length - 1."""
        logits = nnx.merge(graphdef, params).decode(encoded, tokens[None], encoder_segment_ids=segments)[0, length - 1]
        return pick(logits, key, i)

    return types.SimpleNamespace(
        recompute=jax.jit(recompute), prefill=jax.jit(prefill), step=jax.jit(step, donate_argnums=2),
        encoder_decoder_cache=jax.jit(encoder_decoder_cache, static_argnums=3), encode=jax.jit(encode),
        encoder_decoder_next=jax.jit(encoder_decoder_next))


def load_run(run_dir: str, step: int | None = None, check: Callable[[config_lib.Config], Any] | None = None):
    """(config, setup, tokenizer, params, step) of a run's newest checkpoint that restores (or of checkpoint
    `step`), on a mesh over the local devices. A damaged newer checkpoint is named on stderr and passed over,
    as a resume does (the run dir is only read: `pretrax train` is what sets damaged checkpoints aside).
    check(config) runs before anything is restored: a caller's refusal (export's, of a model no
    transformers family expresses) comes first."""
    from pretrax.plan import make_plan

    storage.check_reachable(run_dir, "run dir")
    if not storage.isdir(run_dir):
        what = "is a file, not a run dir" if storage.isfile(run_dir) else "does not exist"
        raise ConfigError(f"run dir {run_dir!r} {what}; give the run.dir of a training run")
    if ckpt.latest_step(run_dir) is None:
        raise CheckpointError(f"run dir {run_dir!r} holds no complete checkpoint; train it first")
    saved = _newest_readable_config(run_dir) if step is None else _config_of_step(run_dir, step)
    # the decoding path (KV cache) and the reference attention serve every device
    cfg = config_lib.from_dict(saved, ["mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1", "model.attention=xla"])
    if check is not None:
        check(cfg)
    plan = make_plan(cfg, training=False)
    setup, tokenizer = plan.setup, plan.tokenizer
    if step is not None:
        with ckpt.open_manager(run_dir, cfg.checkpoint, read_only=True) as reader:
            return cfg, setup, tokenizer, ckpt.restore(reader, step, setup.abstract_state())[0]["params"], step
    step, state, _, skipped = ckpt.restore_latest_good(run_dir, cfg, setup.abstract_state(), announce=False)
    if skipped:
        print(f"pretrax: {ckpt.describe_skipped(skipped)}; using step {step}, the newest that restores",
              file=sys.stderr, flush=True)
    return cfg, setup, tokenizer, state["params"], step


def _config_of_step(run_dir: str, step: int) -> dict:
    """The config saved with checkpoint `step`; a step the run does not have is an error listing those it has."""
    with ckpt.open_manager(run_dir, config_lib.CheckpointSection(), read_only=True) as reader:
        steps = sorted(reader.all_steps())
        if step not in steps:
            raise CheckpointError(f"--step {step}: run dir {run_dir!r} has no checkpoint at step {step}; its "
                                  f"checkpoints are at steps {', '.join(map(str, steps))}")
        return ckpt.read_config(reader, step)


def _newest_readable_config(run_dir: str) -> dict:
    """The config saved with the newest checkpoint whose config still reads (restore checks the rest)."""
    with ckpt.open_manager(run_dir, config_lib.CheckpointSection(), read_only=True) as reader:
        for step in sorted(reader.all_steps(), reverse=True):
            try:
                return ckpt.read_config(reader, step)
            except Exception:  # a damaged checkpoint: restore_latest_good names it
                continue
    raise CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(run_dir)} has a readable config; "
                          f"`pretrax checkpoints {shlex.quote(str(run_dir))}` lists them")

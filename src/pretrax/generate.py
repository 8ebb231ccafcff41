"""Sampling from a trained run: temperature, top-k and top-p (nucleus).

Kept apart from the model (no KV cache yet): each new token runs the model
over a fixed-size window, so the function compiles once and the model code
has no serving branch. Fine for the small models this is used with; a cached
decoding path belongs with the speed work.
"""

from __future__ import annotations

import functools
import shlex
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax import config as config_lib
from pretrax import storage
from pretrax.errors import CheckpointError, ConfigError
from pretrax.train import checkpoint as ckpt
from pretrax.train.state import make_setup, max_positions, model_vocab_size


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


def _choose(logits: jax.Array, key, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """The next token from float32 logits (V,): greedy at temperature 0, else a filtered sample."""
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
) -> str:
    """The continuation of prompt (text only, without the prompt).

    Decoder-only: mode (R, S or X, or a mode token such as "[S2S]") formats
    the prompt as a UL2 example's inputs, mode token first, attended
    bidirectionally, as the decoder-only UL2 format trains it; None: a plain
    document start (bos). Encoder-decoder: the encoder reads [mode] + prompt +
    eos (no mode token when None) and the decoder writes from bos, as the
    encoder-decoder format trains it (``--mode S`` asks a UL2 model to continue).
    """
    pick = functools.partial(_choose, temperature=temperature, top_k=top_k, top_p=top_p)
    if setup.cfg.model.kind == "encoder_decoder":
        return _sample_encoder_decoder(setup, params, tokenizer, prompt, max_new_tokens, pick, seed, mode)
    window = max_positions(setup.cfg)
    if mode is None:
        ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
        prefix = 0
    else:
        ids = [_mode_id(tokenizer, mode)] + tokenizer.encode(prompt)
        prefix = len(ids)
        if prefix >= window:
            raise ConfigError(f"the prompt ({prefix} tokens with its mode token) does not fit the {window}-token window")

    @jax.jit
    def next_token(params, tokens, bidirectional, length, key):
        model = nnx.merge(setup.graphdef, params)
        logits = model(tokens[None], bidirectional=bidirectional[None])[0, length - 1].astype(jnp.float32)  # (V,)
        return pick(logits, key)

    key = jax.random.key(seed)
    new: list[int] = []
    for i in range(max_new_tokens):
        context = (ids + new)[-window:]
        buf = np.full((window,), tokenizer.pad_id, np.int32)
        buf[: len(context)] = context
        bidirectional = (np.arange(window) < prefix).astype(np.int32)
        token = int(next_token(params, jnp.asarray(buf), jnp.asarray(bidirectional), len(context),
                               jax.random.fold_in(key, i)))
        if token == tokenizer.eos_id:
            break
        new.append(token)
    return tokenizer.decode(new)


def _sample_encoder_decoder(setup, params, tokenizer, prompt, max_new_tokens, pick, seed, mode) -> str:
    """Encode the prompt once, then decode token by token over a fixed targets_len window."""
    from pretrax.data.objectives import encoder_decoder_lengths_of

    inputs_len, targets_len = encoder_decoder_lengths_of(setup.cfg.data)
    enc_ids = ([] if mode is None else [_mode_id(tokenizer, mode)]) + tokenizer.encode(prompt) + [tokenizer.eos_id]
    if len(enc_ids) > inputs_len:
        raise ConfigError(f"the prompt ({len(enc_ids)} encoder tokens with mode token and eos) does not fit "
                          f"data.inputs_len={inputs_len}")
    enc = np.full((1, inputs_len), tokenizer.pad_id, np.int32)
    enc[0, : len(enc_ids)] = enc_ids
    enc_segments = (np.arange(inputs_len) < len(enc_ids)).astype(np.int32)[None]  # padding: segment 0, never read

    @jax.jit
    def encode(params, tokens, segments):
        return nnx.merge(setup.graphdef, params).encode(tokens, segment_ids=segments)

    @jax.jit
    def next_token(params, encoded, segments, tokens, length, key):
        model = nnx.merge(setup.graphdef, params)
        logits = model.decode(encoded, tokens[None], encoder_segment_ids=segments)[0, length - 1]
        return pick(logits.astype(jnp.float32), key)

    encoded = encode(params, jnp.asarray(enc), jnp.asarray(enc_segments))
    key = jax.random.key(seed)
    dec = np.full((targets_len,), tokenizer.pad_id, np.int32)
    dec[0] = tokenizer.bos_id
    new: list[int] = []
    for i in range(min(max_new_tokens, targets_len)):
        token = int(next_token(params, encoded, jnp.asarray(enc_segments), jnp.asarray(dec), i + 1,
                               jax.random.fold_in(key, i)))
        if token == tokenizer.eos_id:
            break
        new.append(token)
        if i + 1 < targets_len:
            dec[i + 1] = token
    return tokenizer.decode(new)


def load_run(run_dir: str):
    """Config, setup and params of a run's newest checkpoint that restores, on a mesh over the local
    devices. A damaged newer checkpoint is named on stderr and passed over, as a resume does (the
    run dir is only read: `pretrax train` is what sets damaged checkpoints aside)."""
    from pretrax.data.tokenizer import config_tokenizer
    from pretrax.parallel.mesh import make_mesh

    storage.check_reachable(run_dir, "run dir")
    if not storage.isdir(run_dir):
        what = "is a file, not a run dir" if storage.isfile(run_dir) else "does not exist"
        raise ConfigError(f"run dir {run_dir!r} {what}; give the run.dir of a training run")
    if ckpt.latest_step(run_dir) is None:
        raise CheckpointError(f"run dir {run_dir!r} holds no complete checkpoint; train it first")
    saved = _newest_readable_config(run_dir)
    # sampling recomputes a short window per token: the reference attention serves every device
    cfg = config_lib.from_dict(saved, ["mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1", "model.attention=xla"])
    tokenizer = config_tokenizer(cfg.data)
    setup = make_setup(cfg, make_mesh(cfg.mesh), model_vocab_size(cfg, tokenizer.vocab_size))
    step, state, _, skipped = ckpt.restore_latest_good(run_dir, cfg, setup.abstract_state(), announce=False)
    if skipped:
        print(f"pretrax: {ckpt.describe_skipped(skipped)}; sampling from step {step}, the newest that restores",
              file=sys.stderr, flush=True)
    return cfg, setup, tokenizer, state["params"], step


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

"""Sliding-window (local) attention, model.attention_window: a query sees keys less than w positions away,
on top of the causal, prefix-LM and packing rules; checked against a numpy mask, through the model, the cuDNN
call's arguments (jax's own implementation on CPU) and cached decoding. (Each backend against the reference
with windows, splash's LocalMask included: tests/test_attention_backends.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax import config as config_lib
from pretrax.config import ModelSection
from pretrax.errors import ConfigError
from pretrax.models.attention_backends import AttentionMask, cudnn_attention, xla_attention
from pretrax.models.decoder import Decoder

T, W = 12, 4


def numpy_mask(segments, window, causal=True, prefix=None):
    B, T = segments.shape
    out = np.zeros((B, T, T), bool)
    for b in range(B):
        for t in range(T):
            for s in range(T):
                ok = segments[b, t] == segments[b, s] and abs(t - s) < window
                if causal:
                    in_prefix = prefix is not None and prefix[b, t] and prefix[b, s]
                    ok = ok and (s <= t or in_prefix)
                out[b, t, s] = ok
    return out


@pytest.mark.parametrize("causal,with_prefix", [(True, False), (False, False), (True, True)])
def test_the_mask_is_the_window_and_the_other_rules(causal, with_prefix):
    segments = np.array([[1] * 7 + [2] * 5, [1] * 12], np.int32)
    prefix = np.array([[1] * 3 + [0] * 9, [1] * 6 + [0] * 6], bool) if with_prefix else None
    mask = AttentionMask.self_attention(jnp.asarray(segments), causal=causal,
                                        prefix=None if prefix is None else jnp.asarray(prefix), window=W)
    np.testing.assert_array_equal(np.asarray(mask.dense()), numpy_mask(segments, W, causal, prefix))


def test_cudnn_call_with_its_own_window_equals_the_reference():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, T, 4, 8)), jnp.float32) for _ in range(3))
    segments = jnp.asarray(np.array([[1] * 7 + [2] * 5, [1] * 12], np.int32))
    mask = AttentionMask.self_attention(segments, window=W)
    want = xla_attention(q, k, v, mask.dense())
    got = cudnn_attention(q, k, v, mask, implementation="xla")  # the arguments cuDNN would get
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _logits(model, tokens):
    return np.asarray(model(jnp.asarray(tokens)))


def test_a_one_layer_model_sees_exactly_its_window():
    cfg = ModelSection(d_model=32, n_layers=1, n_heads=4, d_ff=64, attention_window=W)
    model = Decoder(cfg, vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(1).integers(0, 64, (1, T)).astype(np.int32)
    base = _logits(model, tokens)
    far = tokens.copy()
    far[0, 2] = (far[0, 2] + 1) % 64  # W positions before 6: outside its window
    out = _logits(model, far)
    np.testing.assert_array_equal(out[0, 6:], base[0, 6:])  # positions 6.. never see position 2
    assert not np.allclose(out[0, 2:6], base[0, 2:6])  # positions 2..5 do
    full = Decoder(dataclasses.replace(cfg, attention_window=0), vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(0))
    whole = Decoder(dataclasses.replace(cfg, attention_window=T), vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(_logits(whole, tokens), _logits(full, tokens))  # a window of T is full attention


@pytest.mark.slow
def test_global_layers_interleave_with_local_ones_and_the_scanned_stack_agrees():
    """global_every=2: layers 1, 3 attend in full, 0, 2 in a window; scanned as (local, global) pairs, the same
    logits as the listed layers with the same weights."""
    cfg = config_lib.load(None, ["model.d_model=32", "model.n_layers=4", "model.n_heads=4", "model.d_ff=64",
                                 f"data.seq_len={T}", f"model.attention_window={W}", "model.global_every=2"]).model
    listed = Decoder(cfg, vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(0))
    assert [[b.window for b in g.layers] for g in listed.blocks] == [[W, 0], [W, 0]]
    scanned = Decoder(dataclasses.replace(cfg, scan_layers=True), vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(1))
    flat = dict(nnx.to_flat_state(nnx.state(listed, nnx.Param)))

    def fill(path, var):
        if "blocks" not in path:
            return var.replace(flat[path][...])
        i = path.index("blocks")
        return var.replace(jnp.stack([flat[path[:i + 1] + (g,) + path[i + 1:]][...] for g in range(2)]))

    nnx.update(scanned, nnx.from_flat_state([(p, fill(p, v)) for p, v in
                                             nnx.to_flat_state(nnx.state(scanned, nnx.Param))]))
    tokens = np.random.default_rng(2).integers(0, 64, (2, T)).astype(np.int32)
    np.testing.assert_allclose(_logits(scanned, tokens), _logits(listed, tokens), rtol=2e-5, atol=2e-6)
    local_only = Decoder(dataclasses.replace(cfg, global_every=0), vocab_size=64, max_seq_len=T, rngs=nnx.Rngs(0))
    assert not np.allclose(_logits(local_only, tokens), _logits(listed, tokens))  # the global layers see further


@pytest.mark.parametrize("overrides,words", [
    (["model.attention_window=-1"], "'model.attention_window' must be >= 0"),
    (["model.attention_window=600", "data.seq_len=512"], "model.attention_window (600) is longer than the sequence"),
    (["model.global_every=2"], "model.global_every=2 interleaves full-attention layers"),
    (["model.attention_window=8", "model.global_every=3"], "model.n_layers (4) must be a multiple of model.global_every (3)"),
])
def test_bad_windows_and_interleaving_are_one_line(overrides, words):
    with pytest.raises(ConfigError) as e:
        config_lib.load(None, overrides)
    assert words in str(e.value) and "\n" not in str(e.value)

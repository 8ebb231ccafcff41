"""Memory-saving blocks that keep the function: attention in blocks of queries (model.attention_query_chunk)
and the loss in blocks of positions (train.loss_chunk) give the unblocked numbers, forward and gradients;
position biases (T5's buckets, ALiBi) are made block by block, so no (T, S) array of them exists."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from pretrax import config as config_lib
from pretrax.models.attention_backends import AttentionMask, chunked_xla_attention, xla_attention
from pretrax.models.positions import alibi
from pretrax.models.relative_position import BucketedBias
from pretrax.models.score_bias import ScoreBias, bias_array
from pretrax.plan import make_plan
from pretrax.train.state import init_state
from pretrax.train.step import batch_shardings, make_train_step


def _bias(kind, T, N, rng):
    """The bias of a case: None, a (1, N, T, T) array, or a ScoreBias (T5 buckets from packed positions, ALiBi)."""
    positions = jnp.asarray(np.repeat([list(range(40)) + list(range(20)) + list(range(4))], 2, 0), jnp.int32)
    if kind == "array":
        return jnp.asarray(rng.normal(size=(1, N, T, T)), jnp.float32)
    if kind == "relative":
        table = jnp.asarray(rng.normal(size=(8, N)), jnp.float32)
        return ScoreBias(positions, positions, table, BucketedBias(True, 8, 16))
    if kind == "alibi":
        return alibi(positions, positions, N)
    return None


CASES = {  # bias kind -> mask: the shapes of attention each bias meets in the models
    None: dict(causal=True),
    "array": dict(causal=True, prefix=True),  # a prefix-LM prefix in each document
    "relative": dict(causal=False),  # an encoder
    "alibi": dict(causal=True, prefix=True, window=24),
}


@pytest.mark.slow  # 8-9 s each: two gradients of the blocked program compile
@pytest.mark.parametrize("bias_kind", list(CASES))
def test_attention_in_blocks_of_queries_equals_the_whole(bias_kind):
    B, T, N, K, H = 2, 64, 4, 2, 8
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=s), jnp.float32) for s in [(B, T, N, H), (B, T, K, H), (B, T, K, H)])
    segments = jnp.asarray(np.repeat([[1] * 40 + [2] * 20 + [0] * 4], B, 0), jnp.int32)  # two documents, padding
    case = CASES[bias_kind]
    prefix = jnp.asarray(np.repeat([[1] * 10 + [0] * 30 + [1] * 5 + [0] * 19], B, 0), bool) if case.get("prefix") \
        else None
    mask = AttentionMask.self_attention(segments, causal=case["causal"], prefix=prefix, window=case.get("window", 0))
    bias = _bias(bias_kind, T, N, r)
    weights = None if bias is None else (bias.weights if isinstance(bias, ScoreBias) else bias)
    with_weights = (lambda w: w) if not isinstance(bias, ScoreBias) else (lambda w: dataclasses.replace(bias, weights=w))
    whole = lambda q, k, v, w: xla_attention(q, k, v, mask.dense(), bias_array(with_weights(w)), 0.3)  # noqa: E731
    blocks = lambda q, k, v, w: chunked_xla_attention(q, k, v, mask, with_weights(w), 0.3, chunk=16)  # noqa: E731
    np.testing.assert_allclose(blocks(q, k, v, weights), whole(q, k, v, weights), rtol=1e-6, atol=1e-6)
    loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a))))  # noqa: E731
    wrt = (0, 1, 2) if weights is None or bias_kind == "alibi" else (0, 1, 2, 3)  # T5's table learns; slopes do not
    got, want = jax.grad(loss(blocks), wrt)(q, k, v, weights), jax.grad(loss(whole), wrt)(q, k, v, weights)
    for a, e in zip(got, want):
        assert float(jnp.abs(e).max()) > 0
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_encoder_decoder_in_blocks_holds_no_whole_scores_or_bias():
    """With T5's bias computed inside each block of queries, the compiled encoder-decoder train step has no
    float32 array of all T x S query-key pairs: neither scores nor bias nor their gradients (issue 19)."""
    T = 48  # no other dimension of this model is 48

    def hlo(chunk):
        cfg = config_lib.load(None, [*TINY, "model.kind=encoder_decoder", "model.positions=relative",
                                     "data.objective=span_corruption", f"data.inputs_len={T}",
                                     f"data.targets_len={T}", "model.d_model=96", "model.d_ff=256",
                                     f"model.attention_query_chunk={chunk}", "train.batch_size=4"])
        setup = make_plan(cfg, devices=jax.devices()[:1]).setup
        batch = {k: jax.ShapeDtypeStruct((4, T), jnp.int32, sharding=s) for k, s in batch_shardings(setup).items()}
        return make_train_step(setup).lower(setup.abstract_state(), batch).compile().as_text()

    pairs = re.compile(rf"f32\[[0-9,]*{T},{T}[0-9,]*\]")
    assert pairs.search(hlo(0))  # unblocked: the (B, K, G, T, S) scores and the (B, N, T, T) bias exist
    assert not pairs.search(hlo(16)), sorted(set(pairs.findall(hlo(16))))


def _losses(*overrides, steps=3, loops=None):
    """Losses of `steps` train steps on fixed random batches; loops: a list that gets the number of while
    loops in the first step's program (the blocks are loops; without scan_layers nothing else is)."""
    cfg = config_lib.load(None, [*TINY, "data.seq_len=64", "model.remat=full", *overrides])
    setup = make_plan(cfg, devices=jax.devices()[:4]).setup
    state, step = init_state(setup, 0), make_train_step(setup)
    rng, shardings = np.random.default_rng(0), batch_shardings(setup)
    B, T, V = cfg.train.batch_size, cfg.data.seq_len, setup.vocab_size
    out = []
    for _ in range(steps):
        toks = rng.integers(0, V, (B, T + 1), dtype=np.int32)
        batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": np.ones((B, T), np.float32),
                 "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
                 "segment_ids": np.ones((B, T), np.int32), "bidirectional": np.zeros((B, T), np.int32)}
        batch = {k: jax.device_put(batch[k], s) for k, s in shardings.items()}
        if loops is not None and not out:
            loops.append(step.lower(state, batch).as_text().count("stablehlo.while"))
        state, metrics = step(state, batch)
        out.append(float(metrics["loss"]))
    return out


@pytest.mark.slow
def test_training_with_blocked_attention_and_loss_gives_the_unblocked_losses():
    loops = []
    whole = _losses("model.attention_query_chunk=0", "train.loss_chunk=0", loops=loops)
    blocked = _losses("model.attention_query_chunk=16", "train.loss_chunk=16", loops=loops)  # 64 = 4 blocks each
    np.testing.assert_allclose(blocked, whole, rtol=2e-5)
    assert len(set(whole)) == 3  # the steps train: three different losses
    assert loops[0] == 0 and loops[1] > 0, loops  # the blocked program really runs in blocks
    scanned = [_losses("model.scan_layers=true", f"model.attention_query_chunk={c}", f"train.loss_chunk={c}")
               for c in (0, 16)]  # inside nnx.scan too (other weights: scan draws them per stacked layer)
    np.testing.assert_allclose(scanned[1], scanned[0], rtol=2e-5)

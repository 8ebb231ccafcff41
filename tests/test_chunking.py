"""Memory-saving blocks that keep the function: attention in blocks of queries (model.attention_query_chunk)
and the loss in blocks of positions (train.loss_chunk) give the unblocked numbers, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from pretrax import config as config_lib
from pretrax.models.attention_backends import AttentionMask, chunked_xla_attention, xla_attention
from pretrax.plan import make_plan
from pretrax.train.state import init_state
from pretrax.train.step import batch_shardings, make_train_step


@pytest.mark.slow  # 8-9 s each: two gradients of the blocked program compile
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_in_blocks_of_queries_equals_the_whole(with_bias):
    B, T, N, K, H = 2, 64, 4, 2, 8
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=s), jnp.float32) for s in [(B, T, N, H), (B, T, K, H), (B, T, K, H)])
    segments = jnp.asarray(np.repeat([[1] * 40 + [2] * 20 + [0] * 4], B, 0), jnp.int32)  # two documents, padding
    mask = AttentionMask.self_attention(segments, prefix=None).dense()
    bias = jnp.asarray(r.normal(size=(1, N, T, T)), jnp.float32) if with_bias else None
    whole = lambda q, k, v: xla_attention(q, k, v, mask, bias, 0.3)  # noqa: E731
    blocks = lambda q, k, v: chunked_xla_attention(q, k, v, mask, bias, 0.3, chunk=16)  # noqa: E731
    np.testing.assert_allclose(blocks(q, k, v), whole(q, k, v), rtol=1e-6, atol=1e-6)
    loss = lambda fn: (lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))))  # noqa: E731
    for a, e in zip(jax.grad(loss(blocks), (0, 1, 2))(q, k, v), jax.grad(loss(whole), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


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

"""Ring attention (model.attention=ring): keys and values passed around the context devices with a running
softmax and causal load balancing give xla attention's values and gradients on the 8-device CPU mesh."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrax.config import MeshSection
from pretrax.models.attention_backends import AttentionMask, attend, xla_attention
from pretrax.models.positions import alibi
from pretrax.models.relative_position import BucketedBias
from pretrax.models.ring_attention import KV_AXES, Q_AXES, to_zigzag, zigzag_order
from pretrax.models.score_bias import ScoreBias, bias_array
from pretrax.parallel.activations import sharding_context
from pretrax.parallel.mesh import make_mesh

B, T, N, K, H = 2, 64, 4, 2, 8
# two packed documents and padding; positions restart at each document
SEGMENTS = np.repeat([[1] * 40 + [2] * 20 + [0] * 4], B, 0)
POSITIONS = np.repeat([list(range(40)) + list(range(20)) + list(range(4))], B, 0)
PREFIX = np.repeat([[1] * 10 + [0] * 30 + [1] * 5 + [0] * 19], B, 0).astype(bool)

CASES = {  # name -> (mask arguments, bias, key length, mesh)
    "causal-balanced": (dict(causal=True), None, T, dict(data=2, context=4)),
    "causal-alibi-window": (dict(causal=True, window=20), "alibi", T, dict(context=4, tensor=2)),
    "prefix-lm": (dict(causal=True, prefix=True), None, T, dict(data=2, context=4)),
    "encoder-relative": (dict(causal=False), "relative", T, dict(context=4, tensor=2)),
    "cross": (dict(causal=False), None, 48, dict(data=2, context=4)),
}


def _case(name, rng):
    mask_args, bias_kind, S, mesh = CASES[name]
    q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), jnp.float32) for _ in range(2))
    segments = jnp.asarray(SEGMENTS, jnp.int32)
    if S == T:
        prefix = jnp.asarray(PREFIX) if mask_args.get("prefix") else None
        mask = AttentionMask.self_attention(segments, causal=mask_args["causal"], prefix=prefix,
                                            window=mask_args.get("window", 0))
    else:  # cross-attention: decoder segment k reads encoder segment k; the last encoder rows are padding
        kv_segments = jnp.asarray(np.repeat([[1] * 30 + [2] * 14 + [0] * 4], B, 0), jnp.int32)
        mask = AttentionMask.cross_attention(segments, kv_segments)
    positions = jnp.asarray(POSITIONS, jnp.int32)
    bias = None
    if bias_kind == "relative":
        bias = ScoreBias(positions, positions, jnp.asarray(rng.normal(size=(8, N)), jnp.float32),
                         BucketedBias(True, 8, 16))
    elif bias_kind == "alibi":
        bias = alibi(positions, positions, N)
    return q, k, v, mask, bias, make_mesh(MeshSection(**mesh))


@pytest.mark.slow  # 5-10 s each: the ring's forward and gradient compile
@pytest.mark.devices(8)
@pytest.mark.parametrize("name", list(CASES))
def test_ring_attention_gives_xla_attention(name):
    q, k, v, mask, bias, mesh = _case(name, np.random.default_rng(0))
    learn_table = CASES[name][1] == "relative"
    weights = bias.weights if learn_table else jnp.zeros(())

    def with_table(w):
        return dataclasses.replace(bias, weights=w) if learn_table else bias

    def ring(q, k, v, w):
        with sharding_context(mesh, MeshSection().rules):
            # blocks of 4 queries inside each step (16 per device, 8 in a balanced half-step); the end-to-end
            # runs (test_context_parallel.py) take each step whole
            return attend(q, k, v, mask, bias=with_table(w), scale=0.3, backend="ring", query_chunk=4)

    def whole(q, k, v, w):
        return xla_attention(q, k, v, mask.dense(), bias_array(with_table(w)), 0.3)

    with sharding_context(mesh, MeshSection().rules) as ctx:  # the inputs split as the model's would be
        put = lambda x, axes: jax.device_put(x, NamedSharding(mesh, ctx.spec(axes, x.shape)))  # noqa: E731
        q, k, v = put(q, Q_AXES), put(k, KV_AXES), put(v, KV_AXES)
    loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a))))  # noqa: E731
    wrt = (0, 1, 2, 3) if learn_table else (0, 1, 2)

    def with_grads(fn):  # one program: the output and the gradients
        return jax.jit(lambda *a: (fn(*a), jax.grad(loss(fn), wrt)(*a)))

    ring_program = with_grads(ring).lower(q, k, v, weights).compile()
    (got, got_grads), (want, want_grads) = ring_program(q, k, v, weights), with_grads(whole)(q, k, v, weights)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, e in zip(got_grads, want_grads):
        assert float(jnp.abs(e).max()) > 0
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-6)
    hlo = ring_program.as_text()
    assert "collective-permute" in hlo  # the blocks go round the ring
    assert not re.search(rf"f32\[\d+,{k.shape[1]},{K // (2 if 'tensor' in CASES[name][3] else 1)},{H}\]", hlo), \
        "a device holds every key"


def test_zigzag_balances_the_causal_pairs_each_device_computes():
    """Under the zigzag order every device computes the same number of query-key pairs, and no pair that a
    causal mask allows is skipped: the schedule of ring_attention (whole block at the first step; then the
    keys' earlier chunk if they come from an earlier device, the queries' later chunk if from a later one)."""
    T, c = 64, 4
    order = zigzag_order(T, c).reshape(c, T // c)  # the places each device holds
    assert sorted(order.ravel()) == list(range(T))
    h = T // c // 2
    work = []
    for me in range(c):
        pairs, needed = 0, 0
        for source in range(c):
            allowed = order[source][None, :] <= order[me][:, None]  # (queries, keys) causal
            if source == me:
                computed = np.ones_like(allowed)
            elif source < me:
                computed = np.zeros_like(allowed)
                computed[:, :h] = True
            else:
                computed = np.zeros_like(allowed)
                computed[h:, :] = True
            assert not (allowed & ~computed).any(), (me, source)  # nothing allowed is skipped
            pairs, needed = pairs + computed.sum(), needed + allowed.sum()
        work.append(pairs)
    assert len(set(work)) == 1, work  # the same work on every device
    contiguous = [(np.arange(T).reshape(c, -1)[me][:, None] >= np.arange(T)[None, :]).sum() for me in range(c)]
    assert max(contiguous) > 3 * min(contiguous)  # what the order fixes: the last device's work in order


@pytest.mark.devices(4)
def test_to_zigzag_moves_the_chunks_where_the_schedule_expects_them():
    T, c = 32, 4
    mesh = make_mesh(MeshSection(context=c), jax.devices()[:c])
    ring = jax.jit(jax.shard_map(lambda x: to_zigzag(x, "context", c), mesh=mesh, in_specs=P(None, "context"),
                                 out_specs=P(None, "context")))
    np.testing.assert_array_equal(np.asarray(ring(jnp.arange(T)[None]))[0], zigzag_order(T, c))

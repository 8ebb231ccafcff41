"""Every attention backend against the reference (xla_attention with the dense mask): values
and gradients, for each kind of mask the models build; splash also on a real 8-device mesh.

Splash runs its real Pallas kernel, interpreted off TPU (slow), hence the small shapes; cuDNN
runs only on a GPU (`PRETRAX_TEST_PLATFORM=gpu pytest tests/test_attention_backends.py`; its
cases are skipped, saying so, elsewhere), but its arguments (mask, is_causal, bias) are checked
everywhere by sending them through jax's own implementation of the same call.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax.errors import ConfigError
from pretrax.models import splash
from pretrax.models.attention_backends import AttentionMask, attend, check_backend, cudnn_attention, xla_attention
from pretrax.parallel import activations

ON_GPU = jax.default_backend() == "gpu"
CUDNN = pytest.param("cudnn", marks=pytest.mark.skipif(
    not ON_GPU, reason="the cuDNN kernel runs only on a GPU: PRETRAX_TEST_PLATFORM=gpu runs the tests there"))
# "cudnn-args": cudnn_attention's arguments through jax's XLA path (any device)
BACKENDS = ["xla", "splash", "cudnn-args", CUDNN]
H = 64


def _segments(lengths_per_row, T):
    """int (B, T): documents 1, 2, ... of the given lengths, then padding (0)."""
    out = np.zeros((len(lengths_per_row), T), np.int32)
    for row, lengths in zip(out, lengths_per_row):
        starts = np.cumsum([0] + lengths)
        for doc, (a, b) in enumerate(itertools.pairwise(starts), start=1):
            row[a:b] = doc
    return jnp.asarray(out)


def _prefix(segments, lengths_per_row):
    """bool (B, T): the first n tokens of each document, n from lengths_per_row (0: no prefix)."""
    segments = np.asarray(segments)
    out = np.zeros(segments.shape, bool)
    for b, lengths in enumerate(lengths_per_row):
        for doc, n in enumerate(lengths, start=1):
            out[b, np.flatnonzero(segments[b] == doc)[:n]] = True
    return jnp.asarray(out)


def _mask(kind):
    """(mask, T, S) for each kind of attention the models use; '<kind>-window': with a sliding window."""
    if kind.endswith("-window"):
        mask, T, S = _mask(kind.removesuffix("-window"))
        return mask.with_window(40), T, S  # narrower than every document: the band cuts inside them
    T = 256
    seg = _segments([[100, 90], [150, 106]], T)  # row 0 ends in 66 padding tokens
    if kind == "causal":
        return AttentionMask.self_attention(seg), T, T
    if kind == "prefix":  # doc 2 of row 1 has no prefix
        return AttentionMask.self_attention(seg, prefix=_prefix(seg, [[30, 45], [60, 0]])), T, T
    if kind == "encoder":
        return AttentionMask.self_attention(seg, causal=False), T, T
    assert kind == "cross"
    dec = _segments([[50, 50], [128]], 128)  # row 0's 28 padding rows find no encoder key
    enc = _segments([[100, 156], [200]], 256)
    return AttentionMask.cross_attention(dec, enc), 128, 256


def _inputs(B, T, S, N, K, seed=0):
    r = np.random.default_rng(seed)
    q, k, v, w = (jnp.asarray(r.normal(size=s), jnp.float32) for s in [(B, T, N, H), (B, S, K, H), (B, S, K, H),
                                                                       (B, T, N, H)])
    return q, k, v, w


def _run(backend, q, k, v, mask, scale, bias=None):
    if backend == "cudnn-args":
        return cudnn_attention(q, k, v, mask, bias, scale, implementation="xla")
    return attend(q, k, v, mask, bias=bias, scale=scale, backend=backend)


def _value_and_grads(fn, q, k, v, w):
    """(outputs, d(sum(out * w))/d(q, k, v)): w zero on rows whose output is unused."""
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(w.astype(out.dtype))


def _assert_close(got, want, tol):
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert bool(jnp.all(jnp.isfinite(g)))
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol)


# (mask kind, kv heads of 4 query heads, scale): multi-head, grouped-query (K=2), multi-query
# (K=1), and scales other than the default 1/sqrt(64) = 0.125
CASES = [("causal", 4, None), ("prefix", 2, 0.3), ("encoder", 1, None), ("cross", 2, 0.05),
         ("causal-window", 2, None), ("prefix-window", 4, None), ("encoder-window", 1, 0.3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,K,scale", CASES)
def test_backend_matches_reference(backend, kind, K, scale):
    mask, T, S = _mask(kind)
    q, k, v, w = _inputs(2, T, S, 4, K)
    dense = mask.dense()
    has_key = dense.any(-1)  # (B, T): only cross-attention's padding rows lack one
    w = w * has_key[:, :, None, None]
    if backend == "cudnn":  # bfloat16 only; the reference gets the same rounded inputs
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out, grads = _value_and_grads(jax.jit(lambda q, k, v: _run(backend, q, k, v, mask, scale)), q, k, v, w)
    ref_out, ref_grads = _value_and_grads(jax.jit(lambda *a: xla_attention(*(x.astype(jnp.float32) for x in a), dense,
                                                                           scale=scale)), q, k, v, w)
    assert bool(jnp.all(jnp.isfinite(out)))  # also the rows without a key
    tol = 3e-2 if backend == "cudnn" else 2e-4
    _assert_close(jnp.where(has_key[:, :, None, None], out, 0), jnp.where(has_key[:, :, None, None], ref_out, 0),
                  tol)
    _assert_close(grads, ref_grads, tol)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cudnn-args", CUDNN])
def test_cudnn_adds_the_position_bias_and_passes_its_gradient(backend):
    mask, T, _ = _mask("causal")
    q, k, v, w = _inputs(2, T, T, 4, 2)
    bias = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, T, T)), jnp.float32)
    dtype = jnp.bfloat16 if backend == "cudnn" else jnp.float32
    q, k, v = (x.astype(dtype) for x in (q, k, v))

    def loss(fn, b):
        return jnp.sum(fn(q, k, v, b).astype(jnp.float32) * w)

    got = jax.jit(jax.value_and_grad(lambda b: loss(lambda *a: _run(backend, *a[:3], mask, None, a[3]), b)))(bias)
    want = jax.jit(jax.value_and_grad(lambda b: loss(
        lambda *a: xla_attention(*(x.astype(jnp.float32) for x in a[:3]), mask.dense(), a[3]), b)))(bias)
    _assert_close(got, want, 3e-2 if backend == "cudnn" else 2e-4)


@pytest.mark.slow
@pytest.mark.devices(8)
@pytest.mark.parametrize("kind,K", [("prefix", 2), ("causal", 1)])
def test_splash_on_a_mesh_runs_per_shard_and_matches_reference(kind, K):
    """Batch over data x fsdp, heads over tensor; K=1 cannot be split over tensor=2, so each
    shard gets its query heads' copy of the one kv head."""
    auto = (jax.sharding.AxisType.Auto,) * 3  # as parallel/mesh.py builds it
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
    rules = {"batch": ["data", "fsdp"], "heads": "tensor", "kv_heads": "tensor", "head_dim": None, "length": None}
    mask, _, _ = _mask(kind)
    mask = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), mask)  # B = 4, one example per batch shard
    q, k, v, w = _inputs(4, 256, 256, 4, K, seed=2)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    q, k, v, w, mask = jax.device_put((q, k, v, w, mask), batch)

    def loss(q, k, v, mask):
        return jnp.sum(attend(q, k, v, mask, backend="splash") * w)

    with activations.sharding_context(mesh, rules):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        assert "shard_map" in str(jax.make_jaxpr(step)(q, k, v, mask))
        got = step(q, k, v, mask)
    want = jax.value_and_grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v, mask.dense()) * w),
                              argnums=(0, 1, 2))(q, k, v)
    _assert_close(got, want, 2e-4)


def test_splash_block_sizes_follow_the_lengths():
    assert splash.block_sizes(1024, 384) == (512, 128)
    assert splash.block_sizes(768, 2048) == (256, 512)
    with pytest.raises(ConfigError, match="data.seq_len") as e:
        splash.block_sizes(100, 128)
    assert "\n" not in str(e.value)


def test_splash_refuses_a_bias():
    mask, T, _ = _mask("causal")
    q, k, v, _ = _inputs(2, T, T, 4, 4)
    with pytest.raises(ConfigError, match="relative position bias"):
        attend(q, k, v, mask, bias=jnp.zeros((1, 4, T, T)), backend="splash")


BIAS = "model.attention=splash cannot add the T5 relative position bias (model.positions=relative)"


@pytest.mark.parametrize("args,message", [
    (("cudnn", "cpu", "bfloat16", False),
     "model.attention=cudnn needs a GPU (this run's devices are cpu); valid here: xla, splash, ring"),
    (("cudnn", "gpu", "float32", False),
     "model.attention=cudnn needs model.dtype=bfloat16 (cuDNN has no float32 flash attention); "
     "valid here: xla, splash, ring"),
    (("splash", "tpu", "bfloat16", True), BIAS + "; valid here: xla, ring"),
    (("splash", "gpu", "bfloat16", True), BIAS + "; valid here: xla, cudnn, ring"),
    (("flash", "tpu", "float32", False), "model.attention=flash is not a backend; valid here: xla, splash, ring"),
])
def test_check_backend_refuses_in_one_line(args, message):
    backend, platform, dtype, has_bias = args
    with pytest.raises(ConfigError) as e:
        check_backend(backend, platform=platform, dtype=dtype, has_bias=has_bias)
    assert str(e.value) == message


@pytest.mark.parametrize("args", [("xla", "cpu", "float32", True), ("splash", "cpu", "float32", False),
                                  ("cudnn", "gpu", "bfloat16", True), ("splash", "tpu", "bfloat16", False)])
def test_check_backend_accepts(args):
    backend, platform, dtype, has_bias = args
    check_backend(backend, platform=platform, dtype=dtype, has_bias=has_bias)  # raises if refused


@pytest.mark.slow
@pytest.mark.devices(8)
def test_training_with_splash_equals_training_with_xla(tiny_cfg, tmp_path):
    """The whole train step on a (2, 2, 2) mesh, prefix-LM examples packed into rows: the kernel
    under shard_map inside the sharded step gives the reference's losses."""
    from pretrax.train.loop import train

    losses = {}
    for backend in ("xla", "splash"):
        # one layer: a second runs the same kernel again, and the interpreted kernel is most of the compile;
        # stopped at 2 of 3 steps: no final evaluation, whose forward-only step would compile for nothing here
        cfg = tiny_cfg("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "data.seq_len=128", "train.steps=3",
                       "model.n_layers=1", "data.objective=prefix_lm", "checkpoint.every=100",
                       f"model.attention={backend}", run_dir=str(tmp_path / backend))
        losses[backend] = train(cfg, stop_at=2, progress=False).losses
    assert sorted(losses["splash"]) == [1, 2]
    np.testing.assert_allclose([losses["splash"][s] for s in (1, 2)], [losses["xla"][s] for s in (1, 2)], rtol=2e-5)

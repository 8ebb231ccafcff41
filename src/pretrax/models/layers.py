"""Generic layers: named weights, dense (einsum) layers, norms, embedding, MLP.

Every weight is made by `param`, which records its logical axis names (legend in
pretrax/__init__.py) where it is created. The names live in the Param's
``out_sharding`` metadata; ``nnx.get_partition_spec(nnx.state(model))`` reads them
back, and the rules table in the config maps them to mesh axes.

Precision: weights are stored in ``param_dtype`` and cast to the compute
``dtype`` where they are used; norms compute their statistics in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.config import ModelSection
from pretrax.models.parametrization import STANDARD, Parametrization
from pretrax.parallel.activations import constrain

# The residual stream's logical axes (B, T, D): split over the batch axes only by default
# (mesh.rules: act_embed -> null), whatever the weights' 'embed' axis is split over.
RESIDUAL = ("batch", "length", "act_embed")
LOGITS = ("batch", "length", "vocab")


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    """A weight of `shape` with one logical axis name per dimension.

    eager_sharding=False: the model can be built anywhere (on one CPU in tests,
    under nnx.eval_shape to count parameters); where each weight lives is decided
    by the trainer, which maps these names to mesh axes and passes the result as
    the out_shardings of the jitted initialiser.
    """
    assert len(shape) == len(axes), f"shape {shape} needs {len(shape)} axis names, got {axes}"
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, dtype))


def normal_or_zeros(std: float):
    """normal(std), or exact zeros for std 0 (muP's zero-init query and readout)."""
    return nnx.initializers.normal(std) if std else nnx.initializers.zeros_init()


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability `rate`, scale the rest by 1/(1 - rate).

    key None (evaluation, sampling, every caller that passes none) or rate 0: x unchanged, nothing traced.
    The key is explicit, not an nnx.Rngs stream in the model, so the params stay the model's only state
    and the trainer derives each step's key from the run seed and the step (exact resume).
    """
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_key(key: jax.Array | None, n: int) -> tuple:
    """n independent keys from key, or n Nones when dropout is off."""
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def residual_std(cfg: ModelSection, p: Parametrization) -> float:
    """Init std of the projections into the residual stream: GPT-2's init_std / sqrt(2 n_layers)
    (model.residual_init_scaling, the default) or GPT-1's plain init_std, as any hidden matrix."""
    return p.residual_std(cfg.init_std, cfg.n_layers) if cfg.residual_init_scaling else p.hidden_std(cfg.init_std)


def record(module: nnx.Module, name: str, value: jax.Array) -> jax.Array:
    """Hand `value` to an enclosing nnx.capture(..., nnx.Intermediate) (pretrax coordcheck).

    Outside a capture nothing is stored or traced: training pays nothing for it.
    """
    if hasattr(module, "__captures__"):  # set on every module by nnx.capture for the call's duration
        module.sow(nnx.Intermediate, name, value)
    return value


class Einsum(nnx.Module):
    """A dense layer over named axes: y = einsum(spec, x, w) (+ b).

    The bias covers the kernel axes that survive into the output (the trailing
    output axes), so 'BTD,DNH->BTNH' has a bias of shape (N, H). out_axes: the
    output's logical axes, which lay it out over the mesh in a sharded step.
    """

    def __init__(self, spec: str, shape, axes, *, std: float, use_bias: bool, param_dtype, dtype,
                 rngs: nnx.Rngs, out_axes: tuple[str, ...] | None = None):
        self.spec, self.dtype, self.out_axes = spec, dtype, out_axes
        self.kernel = param(rngs, normal_or_zeros(std), tuple(shape), tuple(axes), param_dtype)
        inputs, out = spec.split("->")
        w = inputs.split(",")[1]  # the kernel's letters, e.g. 'DNH'
        keep = [i for i, c in enumerate(w) if c in out]  # kernel axes that reach the output, e.g. N, H
        assert out.endswith("".join(w[i] for i in keep)), f"bias axes must trail the output in {spec!r}"
        self.bias = (param(rngs, nnx.initializers.zeros_init(), tuple(shape[i] for i in keep),
                           tuple(axes[i] for i in keep), param_dtype)
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(self.spec, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y if self.out_axes is None else constrain(y, self.out_axes)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale (Zhang & Sennrich, 2019); no mean subtraction, no bias."""

    def __init__(self, dim: int, *, eps: float, param_dtype, dtype, rngs: nnx.Rngs):
        self.eps, self.dtype = eps, dtype
        # ('norm',): norm vectors are tiny and read by every token, so they stay replicated
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)  # statistics in float32: bf16 sums of squares lose precision
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    """(x - mean) / std * scale + bias (Ba et al., 2016); the bias follows use_bias, as in nanoGPT."""

    def __init__(self, dim: int, *, eps: float, use_bias: bool, param_dtype, dtype, rngs: nnx.Rngs):
        self.eps, self.dtype = eps, dtype
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (dim,), ("norm",), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            x = x + self.bias[...].astype(jnp.float32)
        return x.astype(self.dtype)


def make_norm(cfg: ModelSection, rngs: nnx.Rngs) -> RMSNorm | LayerNorm:
    kw = dict(eps=cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, **kw)
    return LayerNorm(cfg.d_model, use_bias=cfg.use_bias, **kw)


class Embed(nnx.Module):
    """Token embedding (V, D); `attend` reuses it as the output layer when embeddings are tied."""

    def __init__(self, vocab_size: int, dim: int, *, std: float, param_dtype, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.table = param(rngs, nnx.initializers.normal(std), (vocab_size, dim), ("vocab", "embed"), param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.table[...], tokens, axis=0).astype(self.dtype)  # (B, T, D)

    def attend(self, x: jax.Array) -> jax.Array:
        """float32 logits (B, T, V): accumulating over D in bf16 would round the softmax's inputs."""
        w = self.table[...].astype(self.dtype)
        return constrain(jnp.einsum("BTD,VD->BTV", x.astype(self.dtype), w, preferred_element_type=jnp.float32),
                         LOGITS)


class Unembed(nnx.Module):
    """Untied output layer (D, V), used when tie_embeddings is false."""

    def __init__(self, dim: int, vocab_size: int, *, std: float, param_dtype, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = param(rngs, normal_or_zeros(std), (dim, vocab_size), ("embed", "vocab"), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...].astype(self.dtype)
        return constrain(jnp.einsum("BTD,DV->BTV", x.astype(self.dtype), w, preferred_element_type=jnp.float32),
                         LOGITS)


# GELU in its tanh form, as GPT-1/GPT-2 used it; GeGLU uses the same.
ACTIVATIONS = {"swiglu": jax.nn.silu, "geglu": jax.nn.gelu, "gelu": jax.nn.gelu, "relu": jax.nn.relu}


class MLP(nnx.Module):
    """Position-wise feed-forward: out(act(x W_in)), or with a gate (GLU variants,
    Shazeer 2020): out(act(x W_gate) * x W_in)."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD):
        D, F, p = cfg.d_model, cfg.d_ff, parametrization
        kw = dict(use_bias=cfg.use_bias, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype),
                  rngs=rngs)
        self.activation = cfg.activation
        gated = cfg.activation in ("swiglu", "geglu")
        std = p.hidden_std(cfg.init_std)
        hidden = ("batch", "length", "mlp")
        self.gate = Einsum("BTD,DF->BTF", (D, F), ("embed", "mlp"), std=std, out_axes=hidden, **kw) if gated else None
        self.up = Einsum("BTD,DF->BTF", (D, F), ("embed", "mlp"), std=std, out_axes=hidden, **kw)
        self.down = Einsum("BTF,FD->BTD", (F, D), ("mlp", "embed"), std=residual_std(cfg, p), out_axes=RESIDUAL, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        if self.gate is None:
            h = act(self.up(x))  # (B, T, F)
        else:
            h = act(self.gate(x)) * self.up(x)  # (B, T, F)
        return self.down(h)

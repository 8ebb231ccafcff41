"""Routed experts: the feed-forward of a mixture-of-experts layer (model.moe).

A router (D -> E, float32) scores every token against E experts; each token goes to its
top-k (experts_per_token: 1 as in Switch, Fedus et al. 2021; 2 as in GShard, Lepikhin et al.
2020, and Mixtral). Its weights are the router's softmax probabilities of the chosen experts,
renormalised over the k when k > 1 (the same as Mixtral's softmax over the top-k logits); for
k = 1 Switch's unnormalised probability. Each expert is an MLP of the model's kind (gated or
not) of width moe.d_ff; `shared_experts` adds an always-on MLP of that many experts' width
(DeepSeekMoE's shared experts, as one wider MLP).

Two ways to move tokens to experts, one function:

  capacity_factor       GShard's dispatch (the default): every batch row is a group; an expert takes at most
                        C = min(T, ceil(k T capacity_factor / E)) tokens of a row, first choices
                        before second ones, earlier positions first; a token over capacity
                        skips that expert (its other choice, if any, and the residual stream
                        still carry it); `dropped` counts it. Dispatch and combine are einsums
                        whose (E, B, C, ...) middle is laid out over the 'expert' mesh axis:
                        with experts sharded XLA moves tokens between chips by all-to-all.
  dropless: true        dropless: the (token, choice) pairs sorted by expert and multiplied by
                        jax.lax.ragged_dot (one grouped matmul per weight, MegaBlocks-style). With
                        experts sharded, XLA gathers the expert weights instead (no all-to-all).

Padding (segment id 0) is routed nowhere and left out of every statistic. Statistics of the
layer, means over the batch's tokens: `load` (E,), the share of (token, choice) pairs each
expert was chosen for; `dropped`, the share over capacity; `balance`, Switch's load-balance
loss E * sum_e load_e * mean_prob_e (1 when balanced); `z`, ST-MoE's router z-loss, the mean
of logsumexp(router logits)^2. The train step adds model.moe.load_balance_loss * balance +
router_z_loss * z of every MoE layer to the loss (train/step.py).

muP (parametrization.py): the experts are hidden matrices (init and Adam LR of the dense MLP);
the router maps the growing width to a fixed E, the shape of a readout, so it follows muP's
readout rule: SP's init and learning rate, its logits multiplied by 1 / width_mult. At init its
logits then shrink with width like muP's output logits, and Adam's updates move them by
Theta(1) at any width (docs/moe.md).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.config import ModelSection
from pretrax.models.layers import ACTIVATIONS, MLP, RESIDUAL, param, residual_std
from pretrax.models.parametrization import STANDARD, Parametrization, scale
from pretrax.parallel.activations import constrain

# The experts' middle: (E, B, C, ...) is split over the expert axis first, so the batch axis
# gives up its share of that mesh axis (a mesh axis is used once per array: parallel/rules.py)
EXPERT_IN = ("expert", "batch", None, "act_embed")
EXPERT_HIDDEN = ("expert", "batch", None, "mlp")


def capacity(moe, length: int) -> int:
    """Tokens of one row an expert takes: min(T, ceil(k T capacity_factor / E))."""
    wanted = math.ceil(moe.experts_per_token * length * moe.capacity_factor / moe.num_experts)
    return max(1, min(length, wanted))


def expert_width(cfg: ModelSection) -> int:
    return cfg.moe.d_ff or cfg.d_ff


class MoE(nnx.Module):
    """Router + E experts (+ shared experts); (x (B, T, D), token mask (B, T)) -> (y (B, T, D), stats)."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD):
        moe, p = cfg.moe, parametrization
        E, D, F = moe.num_experts, cfg.d_model, expert_width(cfg)
        pdt = jnp.dtype(cfg.param_dtype)
        self.dtype = jnp.dtype(cfg.dtype)
        self.moe = moe
        self.k, self.num_experts = moe.experts_per_token, E
        self.activation = cfg.activation
        self.router_mult = 1.0 / p.width_mult if p.mup else 1.0
        init = nnx.initializers.normal
        self.router = param(rngs, init(cfg.init_std), (D, E), ("embed", "router"), pdt)
        hidden_std = p.hidden_std(cfg.init_std)
        self.gate = (param(rngs, init(hidden_std), (E, D, F), ("expert", "embed", "mlp"), pdt)
                     if cfg.activation in ("swiglu", "geglu") else None)
        self.up = param(rngs, init(hidden_std), (E, D, F), ("expert", "embed", "mlp"), pdt)
        self.down = param(rngs, init(residual_std(cfg, p)), (E, F, D), ("expert", "mlp", "embed"), pdt)
        self.shared = (MLP(dataclasses.replace(cfg, d_ff=moe.shared_experts * F, use_bias=False), rngs=rngs,
                           parametrization=p)
                       if moe.shared_experts else None)

    def __call__(self, x: jax.Array, token_mask: jax.Array | None = None, *,
                 dropless: bool | None = None) -> tuple[jax.Array, dict]:
        """dropless: override model.moe.dropless (the decoding path routes every token)."""
        B, T, _ = x.shape
        valid = (jnp.ones((B, T), bool) if token_mask is None else token_mask).astype(jnp.float32)  # (B, T)
        logits = scale(jnp.einsum("BTD,DE->BTE", x.astype(jnp.float32), self.router[...].astype(jnp.float32)),
                       self.router_mult)  # (B, T, E) float32: routing decisions are not rounded to bf16
        probs = jax.nn.softmax(logits, axis=-1)
        top_p, top_e = jax.lax.top_k(probs, self.k)  # (B, T, k)
        weights = top_p / jnp.sum(top_p, axis=-1, keepdims=True) if self.k > 1 else top_p
        weights = weights * valid[..., None]
        chosen = jax.nn.one_hot(top_e, self.num_experts, dtype=jnp.float32) * valid[..., None, None]  # (B, T, k, E)
        if self.moe.dropless if dropless is None else dropless:
            y, dropped = self._dropless(x, top_e, weights), jnp.zeros((), jnp.float32)
        else:
            y, dropped = self._dispatched(x, chosen, weights)
        if self.shared is not None:
            y = y + self.shared(x)
        tokens = jnp.maximum(jnp.sum(valid), 1.0)
        load = jnp.sum(chosen, axis=(0, 1, 2)) / (tokens * self.k)  # (E,): sums to 1
        mean_prob = jnp.einsum("BTE,BT->E", probs, valid) / tokens
        stats = {
            "load": load,
            "dropped": dropped,
            "balance": self.num_experts * jnp.sum(load * mean_prob),
            "z": jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * valid) / tokens,
        }
        return constrain(y.astype(self.dtype), RESIDUAL), stats

    def _dispatched(self, x: jax.Array, chosen: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
        """GShard's capacity-limited dispatch; returns (y (B, T, D), the share of (token, choice) pairs dropped)."""
        B, T, k, E = chosen.shape
        C = capacity(self.moe, T)
        # buffer slots: first choices of the whole row before second choices, earlier positions first
        order = chosen.transpose(0, 2, 1, 3).reshape(B, k * T, E)
        slot = (jnp.cumsum(order, axis=1) - 1.0).reshape(B, k, T, E).transpose(0, 2, 1, 3)  # (B, T, k, E)
        kept = chosen * (slot < C)
        dropped = 1.0 - jnp.sum(kept) / jnp.maximum(jnp.sum(chosen), 1.0)
        dt = self.dtype
        dispatch = jnp.zeros((B, T, E, C), dt)
        combine = jnp.zeros((B, T, E, C), jnp.float32)
        for j in range(k):  # k is 1 or 2: no (B, T, k, E, C) array
            onto = kept[:, :, j, :, None] * jax.nn.one_hot(slot[:, :, j].astype(jnp.int32), C, dtype=jnp.float32)
            dispatch = dispatch + onto.astype(dt)
            combine = combine + onto * weights[:, :, j, None, None]
        dispatch = jax.lax.stop_gradient(dispatch)  # 0/1 slots from integer choices: nothing to differentiate
        expert_in = constrain(jnp.einsum("BTEC,BTD->EBCD", dispatch, x.astype(dt)), EXPERT_IN)  # all-to-all
        act = ACTIVATIONS[self.activation]
        up = jnp.einsum("EBCD,EDF->EBCF", expert_in, self.up[...].astype(dt))
        h = act(up) if self.gate is None else act(jnp.einsum("EBCD,EDF->EBCF", expert_in, self.gate[...].astype(dt))) * up
        out = constrain(jnp.einsum("EBCF,EFD->EBCD", constrain(h, EXPERT_HIDDEN), self.down[...].astype(dt)), EXPERT_IN)
        y = jnp.einsum("BTEC,EBCD->BTD", combine.astype(dt), out)  # all-to-all back
        return y, dropped

    def _dropless(self, x: jax.Array, top_e: jax.Array, weights: jax.Array) -> jax.Array:
        """Every (token, choice) pair, sorted by expert, through grouped matmuls (jax.lax.ragged_dot)."""
        B, T, k = top_e.shape
        dt = self.dtype
        flat = top_e.reshape(-1)  # (B T k,)
        order = jnp.argsort(flat, stable=True)
        rows = x.reshape(B * T, -1).astype(dt)[order // k]  # (M, D), grouped by expert
        sizes = jnp.bincount(flat, length=self.num_experts).astype(jnp.int32)
        act = ACTIVATIONS[self.activation]
        up = jax.lax.ragged_dot(rows, self.up[...].astype(dt), sizes)
        h = act(up) if self.gate is None else act(jax.lax.ragged_dot(rows, self.gate[...].astype(dt), sizes)) * up
        out = jax.lax.ragged_dot(h, self.down[...].astype(dt), sizes)  # (M, D)
        back = jnp.zeros_like(out).at[order].set(out).reshape(B, T, k, -1)
        return jnp.einsum("BTk,BTkD->BTD", weights.astype(dt), back)



def make_feed_forward(cfg: ModelSection, routed: bool, *, rngs: nnx.Rngs,
                      parametrization: Parametrization = STANDARD) -> MLP | MoE:
    return (MoE if routed else MLP)(cfg, rngs=rngs, parametrization=parametrization)


def feed_forward(mlp: MLP | MoE, x: jax.Array, token_mask: jax.Array, *, decoding: bool = False
                 ) -> tuple[jax.Array, dict]:
    """(output, statistics) of a block's feed-forward, dense (no statistics) or routed; decoding routes
    every token (no capacity), so a sampled token's output never depends on the other tokens of its row."""
    if isinstance(mlp, MoE):
        return mlp(x, token_mask, dropless=True if decoding else None)
    return mlp(x), {}


def expert_share(cfg: ModelSection) -> float:
    """The share of an MoE layer's experts one token uses (experts_per_token / num_experts); 1 when dense."""
    return cfg.moe.experts_per_token / cfg.moe.num_experts if cfg.moe.num_experts else 1.0

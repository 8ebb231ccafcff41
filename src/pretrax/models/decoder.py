"""A decoder-only transformer LM covering both families through ModelSection:

  GPT-1 (Radford et al., 2018): learned positions, post-LayerNorm, GELU, biases,
      tied embeddings, no final norm.
  modern (LLaMA-like): pre-RMSNorm, RoPE, SwiGLU, no biases, a final norm.
  Other positions (model.positions): none, ALiBi (a fixed linear bias on every layer's
  scores, computed once per pass), xPos (RoPE whose scores decay with distance).

tokens -> embedding (+ learned positions) -> n_layers x Block -> (final norm) -> logits.
The parametrization (sp | mup, see parametrization.py) sets the init scales and the
multipliers on the embedding output, the residual branches, attention scores and logits.
Dropout (model.dropout, GPT-1's 0.1) acts on the embedding output, the attention
probabilities and each residual branch, only when the caller passes a dropout key
(the train step does; evaluation and sampling do not).
A row may pack several documents: segment ids keep attention inside each one and
positions restart at each one, so a document's logits do not depend on its neighbours.
Sampling uses `decode_step`, a separate small path over a KV cache (kv_cache.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.config import ModelSection, ParametrizationSection
from pretrax.errors import ConfigError
from pretrax.models import kv_cache
from pretrax.models.attention import Attention
from pretrax.models.attention_backends import AttentionMask
from pretrax.models.layer_stack import REMAT_POLICIES, make_layers, run_layers  # noqa: F401 (REMAT_POLICIES)
from pretrax.models.layers import RESIDUAL, Embed, Unembed, dropout, make_norm, record, split_key
from pretrax.models.layer_kinds import attention_window, is_routed, layer_group
from pretrax.models.moe import feed_forward, make_feed_forward
from pretrax.models.parametrization import STANDARD, Parametrization, resolve, scale
from pretrax.models.positions import LearnedPositions, alibi, rope_angles, xpos_angles
from pretrax.models.score_bias import ScoreBias, bias_array
from pretrax.parallel.activations import constrain


class Block(nnx.Module):
    """One transformer layer: attention then MLP (routed experts when `routed`), each added to the residual
    stream. Returns (x, the MLP's statistics: empty unless routed)."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD,
                 routed: bool = False, window: int = 0):
        self.window = window  # this layer's sliding window (model.attention_window; 0 on global layers)
        self.pre_norm = cfg.norm_position == "pre"
        self.branch_mult = parametrization.branch_mult  # depth transfer; 1 otherwise
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs, parametrization=parametrization)
        self.mlp_norm = make_norm(cfg, rngs)
        self.mlp = make_feed_forward(cfg, routed, rngs=rngs, parametrization=parametrization)

    def __call__(self, x: jax.Array, mask: AttentionMask, rope=None, bias=None,
                 dropout_key=None) -> tuple[jax.Array, dict]:
        """rope: RoPE's or xPos's angles; bias: ALiBi's (B, N, T, T) score bias (None without)."""
        k_probs, k_attn, k_mlp = split_key(dropout_key, 3)  # Nones without a key: no dropout
        mask = mask.with_window(self.window)
        x, _, stats = self._layer(x, lambda h: (self.attn(h, mask, rope, bias=bias, dropout_key=k_probs), None),
                                  mask.q_segments > 0, k_attn, k_mlp)
        return x, stats

    def decode(self, x: jax.Array, cache: dict, mask: jax.Array, rope, start: jax.Array,
               bias=None) -> tuple[jax.Array, dict]:
        """The layer over new tokens x (B, T, D) at positions start.., reading and extending its KV cache."""
        mask = kv_cache.within_window(mask, start, self.window)
        x, cache, _ = self._layer(x, lambda h: self.attn.decode(h, cache, mask, rope, start=start, bias=bias), None,
                                  decoding=True)
        return x, cache

    def _layer(self, x: jax.Array, attend, tokens, k_attn=None, k_mlp=None, decoding=False):
        """The residual block around attend(normed x) -> (output, cache), shared by training and decoding;
        tokens: (B, T) bool, which positions are real (not padding), for routing. Returns (x, cache, stats)."""
        ff = lambda h: feed_forward(self.mlp, h, tokens, decoding=decoding)  # noqa: E731
        if self.pre_norm:  # GPT-2 onwards: the residual stream itself is never normalised
            y, cache = attend(self.attn_norm(x))
            x = x + self.branch("attn", y, k_attn)
            y, stats = ff(self.mlp_norm(x))
            x = x + self.branch("mlp", y, k_mlp)
        else:  # GPT-1 / original transformer: normalise after each residual add
            y, cache = attend(x)
            x = self.attn_norm(x + self.branch("attn", y, k_attn))
            y, stats = ff(x)
            x = self.mlp_norm(x + self.branch("mlp", y, k_mlp))
        return x, cache, stats

    def branch(self, name: str, y: jax.Array, dropout_key=None) -> jax.Array:
        """A residual branch's output as added to the stream: scaled for depth transfer, dropped out in
        training, seen by coordcheck."""
        return record(self, name, dropout(scale(y, self.branch_mult), self.dropout, dropout_key))


class Decoder(nnx.Module):
    """The LM. vocab_size and max_seq_len are the resolved sizes (ModelSection allows 0 for "derive it")."""

    def __init__(self, cfg: ModelSection, *, vocab_size: int, max_seq_len: int, rngs: nnx.Rngs,
                 parametrization: ParametrizationSection | None = None):
        if vocab_size < 1:
            raise ConfigError(f"the decoder needs a vocabulary size >= 1, got {vocab_size} (model.vocab_size)")
        if cfg.positions == "learned" and max_seq_len < 1:
            raise ConfigError(f"learned positions need a table size >= 1, got {max_seq_len} (model.max_seq_len)")
        self.cfg = cfg
        p = self.parametrization = resolve(cfg, parametrization)  # sp or mup: models/parametrization.py
        param_dtype, dtype = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
        self.embed = Embed(vocab_size, cfg.d_model, std=cfg.init_std, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.positions = (LearnedPositions(max_seq_len, cfg.d_model, std=cfg.init_std, param_dtype=param_dtype,
                                           dtype=dtype, rngs=rngs)
                          if cfg.positions == "learned" else None)
        # scan_layers: one Block whose weights have a leading (L,) axis; otherwise a list
        self.blocks = make_layers(lambda r, i: Block(cfg, rngs=r, parametrization=p, routed=is_routed(cfg, i),
                                                     window=attention_window(cfg, i)),
                                  cfg.n_layers, scan=cfg.scan_layers, rngs=rngs, group=layer_group(cfg))
        self.final_norm = make_norm(cfg, rngs) if cfg.final_norm else None
        self.unembed = (None if cfg.tie_embeddings else
                        Unembed(cfg.d_model, vocab_size, std=p.readout_std(cfg.init_std), param_dtype=param_dtype,
                                dtype=dtype, rngs=rngs))

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, bidirectional: jax.Array | None = None,
                 dropout_key: jax.Array | None = None, with_aux: bool = False):
        """tokens, positions, segment_ids, bidirectional: int (B, T). Returns float32 logits (B, T, V),
        or with_aux (logits, {stack: MoE statistics stacked over its MoE layers}; {} for a dense model).

        positions default to 0..T-1, segment_ids to all ones (one document per row;
        0 marks padding), bidirectional to none (purely causal). dropout_key: train with
        model.dropout (None: no dropout, as in evaluation and sampling).
        """
        h, aux = self.hidden_states(tokens, positions=positions, segment_ids=segment_ids,
                                    bidirectional=bidirectional, dropout_key=dropout_key, with_aux=True)
        return (self.readout(h), aux) if with_aux else self.readout(h)

    def hidden_states(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, bidirectional: jax.Array | None = None,
                      dropout_key: jax.Array | None = None, with_aux: bool = False):
        """The final hidden states (B, T, D) the logits are read from (after the final norm, if any);
        arguments as __call__. A fine-tuning head reads them (pretrax.finetune)."""
        B, T = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if segment_ids is None:
            segment_ids = jnp.ones((B, T), jnp.int32)
        mask = AttentionMask.self_attention(segment_ids, prefix=bidirectional)  # causal, prefix-LM, packed

        embed_key, blocks_key = split_key(dropout_key, 2)
        x, rope = self._embed(tokens, positions, embed_key)
        x, stats = self._run_blocks(x, mask, rope, self._bias(positions, positions), blocks_key)
        h = self._final(x)
        return (h, {"blocks": stats} if stats else {}) if with_aux else h

    def init_cache(self, batch: int, length: int) -> dict:
        """An empty KV cache for `length` positions (at most max_seq_len with learned positions)."""
        return kv_cache.empty(self.cfg, self.cfg.n_layers, batch, length)

    def decode_step(self, tokens: jax.Array, cache: dict, *, start: jax.Array,
                    prefix: jax.Array | int = 0) -> tuple[jax.Array, dict]:
        """The decoding path: tokens (B, T) at positions start..start+T-1 of every row, the earlier
        positions read from cache. Returns (float32 logits (B, T, V), cache with these positions written).

        Prefill: start 0, the prompt (padding after it is harmless: nothing before it reads it). Then one
        token per call. prefix: the first `prefix` positions attend to each other (a prefix-LM prompt).
        """
        B, T = tokens.shape
        positions = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
        x, rope = self._embed(tokens, positions)
        S = cache["k"].shape[2]
        mask = kv_cache.slot_mask(start, T, S, prefix)  # (1, T, S); each layer applies its own window
        # ALiBi: new positions against every slot, evaluated once per decoding step and shared by the layers
        bias = bias_array(self._bias(positions, jnp.arange(S, dtype=jnp.int32)[None]))
        x, cache = kv_cache.run_layers(self.blocks, self.cfg.scan_layers, x, cache, mask, rope, start, bias,
                                       group=layer_group(self.cfg))
        return self._logits(x), cache

    def _embed(self, tokens: jax.Array, positions: jax.Array, key=None):
        """The residual stream's start (B, T, D) and the RoPE angles every layer shares (None without RoPE)."""
        x = self.embed(tokens)  # (B, T, D)
        if self.positions is not None:
            x = x + self.positions(positions)
        x = dropout(x, self.cfg.dropout, key)
        x = constrain(record(self, "embed", scale(x, self.parametrization.input_mult)), RESIDUAL)
        rope, c = None, self.cfg
        if c.positions == "rope":  # (sin, cos), computed once and shared by every layer
            rope = rope_angles(positions, c.head_size, c.rope_theta)
        elif c.positions == "xpos":  # (sin, cos, query scale, key scale)
            rope = xpos_angles(positions, c.head_size, c.rope_theta, c.xpos_scale_base)
        return x, rope

    def _bias(self, q_positions: jax.Array, k_positions: jax.Array) -> ScoreBias | None:
        """ALiBi's score bias (B, N, T, S), computed by each layer's attention; None for other positions."""
        if self.cfg.positions != "alibi":
            return None
        return alibi(q_positions, k_positions, self.cfg.n_heads)

    def _logits(self, x: jax.Array) -> jax.Array:
        return self.readout(self._final(x))

    def _final(self, x: jax.Array) -> jax.Array:
        return self.final_norm(x) if self.final_norm is not None else x

    def readout(self, h: jax.Array) -> jax.Array:
        """Float32 logits (B, T, V) from final hidden states h (B, T, D) (`hidden_states`)."""
        logits = self.embed.attend(h) if self.unembed is None else self.unembed(h)  # (B, T, V) float32
        return record(self, "logits", scale(logits, self.parametrization.output_mult))

    def _run_blocks(self, x: jax.Array, mask: AttentionMask, rope, bias, key=None) -> tuple[jax.Array, dict]:
        c = self.cfg
        return run_layers(self.blocks, x, (mask, rope, bias), n_layers=c.n_layers, scan=c.scan_layers, remat=c.remat,
                          dropout_key=key, group=layer_group(c))

"""A T5.1.1 / UL2-style encoder-decoder (Raffel et al., 2020; Tay et al., 2022).

  encoder_tokens -> shared embedding -> n_encoder_layers x EncoderBlock -> final norm = encoded
  decoder_tokens -> shared embedding -> n_layers x DecoderBlock(encoded) -> final norm -> logits

Both stacks are pre-RMSNorm with no biases (as ModelSection says: norm, use_bias),
a gated MLP (activation geglu for T5.1.1, swiglu for UL2) and, with
positions: relative, a T5 relative position bias: one table per stack, turned
into a bias once per forward pass and added to the self-attention scores of every
layer of that stack (bidirectional buckets in the encoder, causal ones in the
decoder). positions: alibi puts ALiBi's fixed -m_h |i - j| there instead (no
table). Cross-attention has no position bias. The input embedding is shared by
the two stacks; the output layer is separate (tie_embeddings: false, T5.1.1 and
UL2) or the same table.

Choices, where T5 differs from the decoder-only model in this package:
  * attention scores are scaled by 1/sqrt(head_dim), as in the decoder. T5 omits
    the scale and folds it into the query's init; the two are the same function
    (to load T5 weights, multiply the query kernel by sqrt(head_dim)). The
    relative bias is added after the scale, so it means the same in both.
  * tied output: logits = x · embedding, unscaled, as in the decoder. T5 (1.0)
    multiplies tied logits by d_model^-0.5 because its embeddings start at std 1;
    ours start at init_std like every other weight, so no rescale is needed
    (to load tied T5 weights, scale the final norm by d_model^-0.5). Untied: x · W_out.
  * weights start at normal(init_std), residual outputs at init_std / sqrt(2 n_layers)
    (of their own stack), as in the decoder, rather than T5's per-matrix fan-in init.
    Under muP (parametrization.py) both stacks follow the decoder's rules; the
    embedding multiplier applies to both stacks' inputs.

Dropout (model.dropout), as in the decoder, on each stack's embedding output, on
attention probabilities (self and cross) and on every residual branch, only when a
dropout key is passed (training); T5's further dropouts (inside the MLP, after
the final norm) are not applied.

Packed rows: segment ids keep encoder self-attention inside one encoder segment
(bidirectional), decoder self-attention causal inside one decoder segment, and
cross-attention from decoder segment k to encoder segment k only. Positions
restart at each segment, so packed examples give the same logits as run alone.
Segment 0 is padding; its outputs are finite and meaningless.

Sampling encodes once and then runs `decode_step` over a KV cache (kv_cache.py): the
cross-attention keys and values are computed once per prompt, the decoder's own are
added one position at a time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.config import ModelSection, ParametrizationSection
from pretrax.errors import ConfigError
from pretrax.models import kv_cache
from pretrax.models.attention import Attention
from pretrax.models.attention_backends import AttentionMask
from pretrax.models.layer_stack import LayerGroup, make_layers, run_layers, stack
from pretrax.models.layers import RESIDUAL, Embed, Unembed, dropout, make_norm, record, split_key
from pretrax.models.layer_kinds import attention_window, is_routed, layer_group
from pretrax.models.moe import feed_forward, make_feed_forward
from pretrax.models.parametrization import STANDARD, Parametrization, resolve, scale
from pretrax.models.positions import alibi
from pretrax.models.relative_position import RelativePositionBias
from pretrax.models.score_bias import ScoreBias, bias_array
from pretrax.parallel.activations import constrain


class EncoderBlock(nnx.Module):
    """Bidirectional self-attention then MLP (routed experts when `routed`), each pre-normed and added to the
    residual stream. Returns (x, the MLP's statistics: empty unless routed)."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD,
                 routed: bool = False, window: int = 0):
        self.window = window  # this layer's sliding window (0: full attention)
        self.branch_mult = parametrization.branch_mult  # depth transfer; 1 otherwise
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs, parametrization=parametrization)
        self.mlp_norm = make_norm(cfg, rngs)
        self.mlp = make_feed_forward(cfg, routed, rngs=rngs, parametrization=parametrization)

    def __call__(self, x: jax.Array, mask: AttentionMask, bias: jax.Array | None,
                 dropout_key=None) -> tuple[jax.Array, dict]:
        k_probs, k_attn, k_mlp = split_key(dropout_key, 3)  # Nones without a key: no dropout
        mask = mask.with_window(self.window)
        x = x + self.branch("attn", self.attn(self.attn_norm(x), mask, bias=bias, dropout_key=k_probs), k_attn)
        y, stats = feed_forward(self.mlp, self.mlp_norm(x), mask.q_segments > 0)
        return x + self.branch("mlp", y, k_mlp), stats

    def branch(self, name: str, y: jax.Array, dropout_key=None) -> jax.Array:
        """A residual branch's output as added to the stream: scaled for depth transfer, dropped out in
        training, seen by coordcheck."""
        return record(self, name, dropout(scale(y, self.branch_mult), self.dropout, dropout_key))


class DecoderBlock(nnx.Module):
    """Causal self-attention, cross-attention to the encoder's output, MLP (or routed experts); all pre-normed.
    Returns (x, the MLP's statistics)."""

    def __init__(self, cfg: ModelSection, *, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD,
                 routed: bool = False, window: int = 0):
        self.window = window  # this layer's sliding window over the decoder's own tokens (0: full)
        self.branch_mult = parametrization.branch_mult
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs, parametrization=parametrization)
        self.cross_norm = make_norm(cfg, rngs)
        self.cross = Attention(cfg, rngs=rngs, parametrization=parametrization)
        self.mlp_norm = make_norm(cfg, rngs)
        self.mlp = make_feed_forward(cfg, routed, rngs=rngs, parametrization=parametrization)

    def __call__(self, x: jax.Array, encoded: jax.Array, mask: AttentionMask, cross_mask: AttentionMask,
                 bias: jax.Array | None, dropout_key=None) -> tuple[jax.Array, dict]:
        k_probs, k_attn, k_cross_probs, k_cross, k_mlp = split_key(dropout_key, 5)
        mask = mask.with_window(self.window)
        x = x + self.branch("attn", self.attn(self.attn_norm(x), mask, bias=bias, dropout_key=k_probs), k_attn)
        x = x + self.branch("cross", self.cross(self.cross_norm(x), cross_mask, kv=encoded, dropout_key=k_cross_probs),
                            k_cross)
        y, stats = feed_forward(self.mlp, self.mlp_norm(x), mask.q_segments > 0)
        return x + self.branch("mlp", y, k_mlp), stats

    def decode(self, x: jax.Array, cache: dict, mask: jax.Array, cross_mask: jax.Array, bias: jax.Array | None,
               start: jax.Array) -> tuple[jax.Array, dict]:
        """The decoding path: new tokens x (B, T, D) at positions start.., self-attention over the layer's
        cache["self"] (extended here), cross-attention over cache["cross"] (the encoder's, fixed)."""
        mask = kv_cache.within_window(mask, start, self.window)
        y, self_kv = self.attn.decode(self.attn_norm(x), cache["self"], mask, start=start, bias=bias)
        x = x + self.branch("attn", y)
        x = x + self.branch("cross", self.cross.decode(self.cross_norm(x), cache["cross"], cross_mask)[0])
        y, _ = feed_forward(self.mlp, self.mlp_norm(x), None, decoding=True)
        return x + self.branch("mlp", y), {"self": self_kv, "cross": cache["cross"]}

    branch = EncoderBlock.branch


class Stack(nnx.Module):
    """n layers of one block type, a relative position table and a final norm.

    With scan_layers the layers are one block whose weights have a leading (L,)
    axis named 'layers', applied by nnx.scan; otherwise a list of blocks.
    """

    def __init__(self, block_type, cfg: ModelSection, n_layers: int, *, bidirectional: bool, rngs: nnx.Rngs,
                 parametrization: Parametrization = STANDARD):
        cfg = dataclasses.replace(cfg, n_layers=n_layers)  # residual_std scales with this stack's depth
        self.cfg = cfg
        self.alibi = cfg.positions == "alibi"  # ALiBi's linear bias instead of T5's learned one
        self.relpos = (RelativePositionBias(cfg.n_heads, num_buckets=cfg.relative_buckets,
                                            max_distance=cfg.relative_max_distance, bidirectional=bidirectional,
                                            std=cfg.init_std, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
                       if cfg.positions == "relative" else None)
        self.group = layer_group(cfg)  # layers per scanned unit: routed / dense, local / global layers alternating
        self.blocks = make_layers(lambda r, i: block_type(cfg, rngs=r, parametrization=parametrization,
                                                          routed=is_routed(cfg, i), window=attention_window(cfg, i)),
                                  n_layers, scan=cfg.scan_layers, rngs=rngs, group=self.group)
        self.final_norm = make_norm(cfg, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array | None, *args, dropout_key=None) -> tuple[jax.Array, dict]:
        """x (B, T, D); positions (B, T) or None (0..T-1 in every row); args: the block's inputs after x,
        without the bias, which is made here (a ScoreBias each layer evaluates) and appended (then one dropout
        key per layer).
        Returns (the final-normed output, the MoE layers' statistics stacked; {} when dense)."""
        bias = None
        if self.relpos is not None or self.alibi:
            if positions is None:  # the same bias for every row: (1, N, T, T)
                positions = jnp.arange(x.shape[1], dtype=jnp.int32)[None]
            bias = self._bias(positions, positions)  # (B or 1, N, T, T), computed by each layer's attention
        c = self.cfg
        x, stats = run_layers(self.blocks, x, (*args, bias), n_layers=c.n_layers, scan=c.scan_layers,
                              remat=c.remat, dropout_key=dropout_key, group=self.group)
        return self.final_norm(x), stats

    def _bias(self, q_positions: jax.Array, k_positions: jax.Array) -> ScoreBias:
        """This stack's self-attention bias (B or 1, N, T, S): T5's learned buckets or ALiBi's -m |i - j|."""
        if self.alibi:
            return alibi(q_positions, k_positions, self.cfg.n_heads)
        return self.relpos(q_positions, k_positions)

    def decode(self, x: jax.Array, cache: dict, mask: jax.Array, cross_mask: jax.Array,
               start: jax.Array) -> tuple[jax.Array, dict]:
        """The decoder stack's decoding path: x (B, T, D) at positions start..; cache {"self", "cross"}
        stacked over layers. The relative bias is that of the new positions against every cached slot."""
        bias = None
        if self.relpos is not None or self.alibi:  # (1, N, T, S); slots after a query are masked, whatever their bias
            slots = cache["self"]["k"].shape[2]
            bias = bias_array(self._bias(start + jnp.arange(x.shape[1], dtype=jnp.int32)[None],
                                         jnp.arange(slots)[None]))  # once per decoding step, shared by the layers
        x, cache = kv_cache.run_layers(self.blocks, self.cfg.scan_layers, x, cache, mask, cross_mask, bias, start,
                                       group=self.group)
        return self.final_norm(x), cache


class EncoderDecoder(nnx.Module):
    """The model. vocab_size is the resolved size (ModelSection allows 0 for "derive it")."""

    def __init__(self, cfg: ModelSection, *, vocab_size: int, rngs: nnx.Rngs,
                 parametrization: ParametrizationSection | None = None):
        if vocab_size < 1:
            raise ConfigError(f"the encoder-decoder needs a vocabulary size >= 1, got {vocab_size} (model.vocab_size)")
        if cfg.positions not in ("relative", "none", "alibi"):
            raise ConfigError(f"the encoder-decoder supports positions 'relative', 'alibi' or 'none', got "
                              f"{cfg.positions!r}")
        if cfg.norm_position != "pre":
            raise ConfigError("the encoder-decoder is pre-norm only (model.norm_position: pre)")
        if cfg.n_encoder_layers < 0 or cfg.relative_buckets < 2 or cfg.relative_max_distance < 1:
            raise ConfigError("model.n_encoder_layers must be >= 0, model.relative_buckets >= 2 and "
                              "model.relative_max_distance >= 1")
        self.cfg = cfg
        p = self.parametrization = resolve(cfg, parametrization)  # sp or mup: models/parametrization.py
        param_dtype, dtype = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
        self.embed = Embed(vocab_size, cfg.d_model, std=cfg.init_std, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.encoder = Stack(EncoderBlock, cfg, cfg.n_encoder_layers or cfg.n_layers, bidirectional=True, rngs=rngs,
                             parametrization=p)
        self.decoder = Stack(DecoderBlock, cfg, cfg.n_layers, bidirectional=False, rngs=rngs, parametrization=p)
        self.unembed = (None if cfg.tie_embeddings else
                        Unembed(cfg.d_model, vocab_size, std=p.readout_std(cfg.init_std), param_dtype=param_dtype,
                                dtype=dtype, rngs=rngs))

    def __call__(self, encoder_tokens: jax.Array, decoder_tokens: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
                 encoder_positions: jax.Array | None = None, decoder_positions: jax.Array | None = None,
                 dropout_key: jax.Array | None = None, with_aux: bool = False):
        """encoder_* int (B, S), decoder_* int (B, T). Returns float32 logits (B, T, V), or with_aux
        (logits, {"encoder"/"decoder": MoE statistics stacked over the stack's MoE layers}; {} when dense).

        decoder_tokens are the decoder's inputs (the targets shifted right). Segment ids
        default to all ones (one example per row), positions to 0..len-1. dropout_key:
        train with model.dropout (None: no dropout).
        """
        encoder_key, decoder_key = split_key(dropout_key, 2)
        encoded, enc_stats = self.encode(encoder_tokens, segment_ids=encoder_segment_ids,
                                         positions=encoder_positions, dropout_key=encoder_key, with_aux=True)
        logits, dec_stats = self.decode(encoded, decoder_tokens, encoder_segment_ids=encoder_segment_ids,
                                        segment_ids=decoder_segment_ids, positions=decoder_positions,
                                        dropout_key=decoder_key, with_aux=True)
        aux = {name: s for name, s in (("encoder", enc_stats), ("decoder", dec_stats)) if s}
        return (logits, aux) if with_aux else logits

    def encode(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, dropout_key: jax.Array | None = None, with_aux: bool = False):
        """Encoder tokens (B, S) -> encoded (B, S, D) in the compute dtype (after the encoder's final norm);
        with_aux: (encoded, the encoder's MoE statistics)."""
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        mask = AttentionMask.self_attention(segment_ids, causal=False)  # bidirectional within a segment
        embed_key, stack_key = split_key(dropout_key, 2)
        x = dropout(self.embed(tokens), self.cfg.dropout, embed_key)
        x = constrain(record(self, "encoder_embed", scale(x, self.parametrization.input_mult)), RESIDUAL)
        encoded, stats = self.encoder(x, positions, mask, dropout_key=stack_key)
        return (encoded, stats) if with_aux else encoded

    def decode(self, encoded: jax.Array, tokens: jax.Array, *, encoder_segment_ids: jax.Array | None = None,
               segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               dropout_key: jax.Array | None = None, with_aux: bool = False):
        """encoded (B, S, D) from `encode`, decoder tokens (B, T) -> float32 logits (B, T, V) (with_aux:
        and the decoder's MoE statistics)."""
        B, S = encoded.shape[:2]
        if encoder_segment_ids is None:
            encoder_segment_ids = jnp.ones((B, S), jnp.int32)
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        mask = AttentionMask.self_attention(segment_ids)  # causal within a segment
        # decoder segment k reads encoder segment k. A decoder row with no matching encoder
        # token (padding) gets a uniform average over masked scores: finite, unused.
        cross_mask = AttentionMask.cross_attention(segment_ids, encoder_segment_ids)
        embed_key, stack_key = split_key(dropout_key, 2)
        x = dropout(self.embed(tokens), self.cfg.dropout, embed_key)
        x = constrain(record(self, "decoder_embed", scale(x, self.parametrization.input_mult)), RESIDUAL)
        x, stats = self.decoder(x, positions, encoded, mask, cross_mask, dropout_key=stack_key)
        return (self._logits(x), stats) if with_aux else self._logits(x)

    def init_cache(self, encoded: jax.Array, length: int, encoder_segment_ids: jax.Array | None = None) -> dict:
        """The decoding cache for `length` decoder positions (data.targets_len): every layer's
        cross-attention keys and values of `encoded` (B, S, D), computed once here, and empty
        self-attention slots. encoder_segment_ids (B, S): 0 marks encoder padding, never read."""
        B, S = encoded.shape[:2]
        if encoder_segment_ids is None:
            encoder_segment_ids = jnp.ones((B, S), jnp.int32)

        def cross_kv(unit, encoded):  # a block's, or a LayerGroup's blocks' stacked
            if isinstance(unit, LayerGroup):
                return stack([b.cross.project_kv(encoded) for b in unit.layers])
            return unit.cross.project_kv(encoded)

        if self.cfg.scan_layers:
            cross = nnx.vmap(cross_kv, in_axes=(0, None), out_axes=0,
                             transform_metadata={nnx.PARTITION_NAME: "layers"})(self.decoder.blocks, encoded)
        else:
            cross = stack([cross_kv(b, encoded) for b in self.decoder.blocks])
        cross = jax.tree.map(lambda a: a.reshape((self.cfg.n_layers,) + a.shape[-4:]), cross)  # (L, B, S, K, H)
        return {"self": kv_cache.empty(self.cfg, self.cfg.n_layers, B, length), "cross": cross,
                "encoder_segment_ids": encoder_segment_ids}

    def decode_step(self, tokens: jax.Array, cache: dict, *, start: jax.Array) -> tuple[jax.Array, dict]:
        """The decoding path: decoder tokens (B, T) at positions start..start+T-1 (bos at 0, as training
        starts the decoder), the earlier ones read from cache (`init_cache`). Returns (float32 logits
        (B, T, V), the cache with these positions written)."""
        T = tokens.shape[1]
        x = constrain(scale(self.embed(tokens), self.parametrization.input_mult), RESIDUAL)
        mask = kv_cache.slot_mask(start, T, cache["self"]["k"].shape[2])  # (1, T, S) causal; windows per layer
        cross_mask = jnp.broadcast_to(cache["encoder_segment_ids"][:, None, :] == 1,
                                      (tokens.shape[0], T, cache["encoder_segment_ids"].shape[1]))  # (B, T, S_enc)
        x, layers = self.decoder.decode(x, {"self": cache["self"], "cross": cache["cross"]}, mask, cross_mask, start)
        return self._logits(x), {**cache, **layers}

    def _logits(self, x: jax.Array) -> jax.Array:
        logits = self.embed.attend(x) if self.unembed is None else self.unembed(x)  # (B, T, V) float32
        return record(self, "logits", scale(logits, self.parametrization.output_mult))

"""Model families as objects: what the rest of pretrax asks of a model kind, answered in one place.

A family (model.kind: decoder, encoder_decoder; MoE and others later) says which arrays a
packed batch carries, how its model turns a batch into logits, how long each row's sides
are, how many query-key pairs its attention scores (for FLOPs), and how its stacks are
described. Code outside models/ asks `family_of(cfg.model)` instead of testing the kind,
so a new family is one new object here, not a branch in every module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from pretrax.config import DataSection, ModelSection
from pretrax.models.layer_kinds import routed_layers
from pretrax.sizes import encoder_decoder_lengths

# Decoder-only rows: tokens, next-token targets, packing (segments, positions), which targets
# count, and the prefix-LM's bidirectional span.
DECODER_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "bidirectional")
# The encoder-decoder: decoder-side features under the same names (inputs are the shifted targets), no
# prefix attention, plus the encoder's row (data/objectives.py, data/pair_packing.py).
ENCODER_DECODER_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask",
                        "encoder_inputs", "encoder_segment_ids", "encoder_positions")


@dataclasses.dataclass(frozen=True)
class Family:
    """The decoder-only LM; the encoder-decoder below overrides what differs."""

    name: str = "decoder"
    batch_keys: tuple[str, ...] = DECODER_KEYS
    has_encoder: bool = False  # rows come in (encoder, decoder) pairs: the data layer packs pairs
    example_side: str = "bidirectional"  # what an example's unscored inputs are, for `pretrax data inspect`
    default_objective: str = "causal_lm"  # what an imported model of this family is trained on unless told

    def logits(self, model: Any, batch: dict, dropout_key: jax.Array | None = None, with_aux: bool = False):
        """Float32 logits (B, T, V) of a packed batch (dropout off without a key); with_aux: (logits, the MoE
        layers' statistics by stack, {} for a dense model)."""
        return model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                     bidirectional=batch["bidirectional"], dropout_key=dropout_key, with_aux=with_aux)

    def hidden_and_readout(self, model: Any, batch: dict) -> tuple[jax.Array, Any, dict] | None:
        """(final hidden states (B, T, D), the function from them to float32 logits, the MoE statistics) of a
        packed batch, so that the loss can form the logits a block of positions at a time; None where the
        family cannot split them."""
        h, aux = model.hidden_states(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                                     bidirectional=batch["bidirectional"], with_aux=True)
        return h, model.readout, aux

    def row_lengths(self, data: DataSection) -> tuple[int, int]:
        """(encoder tokens per row, 0 without an encoder; tokens a row trains on)."""
        return 0, data.seq_len

    def feature_length(self, key: str, data: DataSection) -> int:
        """The length of batch feature `key` (every feature of a row has its side's length)."""
        return data.seq_len

    def attention_lengths(self, data: DataSection) -> tuple[int, int]:
        """(query length, key length) of the attention kernels: what splash's tiles must divide."""
        return data.seq_len, data.seq_len

    def step_flops(self, groups: Any, m: ModelSection, B: int, S: int, T: int, pair: float,
                   causal: float) -> tuple[float, float]:
        """(matmul, attention) training FLOPs of a step of B rows (S encoder tokens, T trained tokens each):
        6 x active parameters x the tokens each multiplies (groups: the parameter-group table, by FLOPs side), and
        `pair` FLOPs per scored (query, key) pair per layer, causal masks counted `causal` (1 or 1/2)."""
        return 6.0 * groups.size(side="decoder", active=True) * B * T, pair * m.n_layers * B * T * T * causal

    def encoder_layers(self, m: ModelSection) -> int:
        return 0

    def stacks(self, m: ModelSection) -> dict[str, int]:
        """The model's layer stacks as its MoE statistics name them, with their depths."""
        return {"blocks": m.n_layers}

    def routed_layer_names(self, m: ModelSection) -> list[tuple[str, list[str]]]:
        """(stack, the names of its MoE layers in metrics, e.g. 'layer1' or 'encoder.layer1') per stack that has any."""
        prefix = {"blocks": ""}
        out = []
        for stack, depth in self.stacks(m).items():
            names = [f"{prefix.get(stack, stack + '.')}layer{i}" for i in routed_layers(m, depth)]
            if names:
                out.append((stack, names))
        return out

    def depth_keys(self, m: ModelSection) -> dict[str, int]:
        """The config keys that set a stack's depth (a compile-cost model varies them)."""
        return {"model.n_layers": m.n_layers}

    def describe(self, m: ModelSection, vocab: int, head_dim: int, kv_heads: int) -> str:
        """One line for `pretrax info`."""
        return (f"model: {m.kind}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads x {head_dim} "
                f"({kv_heads} kv), d_ff {m.d_ff}, vocab {vocab}, {m.positions} positions, {m.norm_position}-"
                f"{m.norm}, {m.activation}{moe_words(m)}")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderFamily(Family):
    """T5 / UL2: an encoder over the inputs, a decoder over the targets attending to it."""

    name: str = "encoder_decoder"
    batch_keys: tuple[str, ...] = ENCODER_DECODER_KEYS
    has_encoder: bool = True
    example_side: str = "encoder"
    default_objective: str = "span_corruption"  # T5's; UL2 (ul2) or others by override

    def hidden_and_readout(self, model: Any, batch: dict) -> None:
        return None  # the loss forms the whole logits at once

    def logits(self, model: Any, batch: dict, dropout_key: jax.Array | None = None, with_aux: bool = False):
        return model(batch["encoder_inputs"], batch["inputs"], encoder_segment_ids=batch["encoder_segment_ids"],
                     decoder_segment_ids=batch["segment_ids"], encoder_positions=batch["encoder_positions"],
                     decoder_positions=batch["positions"], dropout_key=dropout_key, with_aux=with_aux)

    def row_lengths(self, data: DataSection) -> tuple[int, int]:
        return encoder_decoder_lengths(data)

    def feature_length(self, key: str, data: DataSection) -> int:
        inputs_len, targets_len = encoder_decoder_lengths(data)
        return inputs_len if key.startswith("encoder_") else targets_len

    def attention_lengths(self, data: DataSection) -> tuple[int, int]:
        inputs_len, targets_len = encoder_decoder_lengths(data)
        return targets_len, inputs_len

    def step_flops(self, groups: Any, m: ModelSection, B: int, S: int, T: int, pair: float,
                   causal: float) -> tuple[float, float]:
        n_enc, n_dec = groups.size(side="encoder", active=True), groups.size(side="decoder", active=True)
        attention = B * pair * (self.encoder_layers(m) * S * S  # encoder, bidirectional
                                + m.n_layers * (T * T * causal + T * S))  # decoder: causal self + cross
        return 6.0 * B * (n_enc * S + n_dec * T), attention

    def encoder_layers(self, m: ModelSection) -> int:
        return m.n_encoder_layers or m.n_layers

    def stacks(self, m: ModelSection) -> dict[str, int]:
        return {"encoder": self.encoder_layers(m), "decoder": m.n_layers}

    def depth_keys(self, m: ModelSection) -> dict[str, int]:
        if m.n_encoder_layers and m.n_encoder_layers != m.n_layers:
            return {"model.n_layers": m.n_layers, "model.n_encoder_layers": m.n_encoder_layers}
        return super().depth_keys(m)  # both stacks follow n_layers

    def describe(self, m: ModelSection, vocab: int, head_dim: int, kv_heads: int) -> str:
        return (f"model: encoder_decoder, {self.encoder_layers(m)}+{m.n_layers} layers, d_model {m.d_model}, "
                f"{m.n_heads} heads x {head_dim}, d_ff {m.d_ff}, vocab {vocab}, {m.activation}, "
                f"relative position bias{moe_words(m)}")


def moe_words(m: ModelSection) -> str:
    """', MoE: ...' for a describe line; '' for a dense model."""
    moe = m.moe
    if not moe.num_experts:
        return ""
    routing = "dropless" if moe.dropless else f"capacity factor {moe.capacity_factor:g}"
    shared = f", {moe.shared_experts} shared" if moe.shared_experts else ""
    return (f", MoE: {moe.num_experts} experts x d_ff {moe.d_ff or m.d_ff}{shared}, top-{moe.experts_per_token}, "
            f"every {moe.every} layer{'s' if moe.every > 1 else ''}, {routing}")


FAMILIES: dict[str, Family] = {f.name: f for f in (Family(), EncoderDecoderFamily())}


def family_of(model: ModelSection) -> Family:
    """The family model.kind names (config validation has already refused any other kind)."""
    return FAMILIES[model.kind]

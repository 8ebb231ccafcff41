"""Which layers of a stack differ from their neighbours, and so how many layers one scanned unit holds.

Two settings make layers of two kinds: routed experts every model.moe.every-th layer (the others dense),
and sliding-window attention with a full-attention layer every model.global_every-th (Gemma 2, Mistral
style interleaving). A scanned stack needs identical units, so the unit is a group of
lcm(moe.every, global_every) layers (layer_stack.LayerGroup) and each layer's kind follows from its index:
the same index inside a group and inside the stack, as a group length is a multiple of both periods.
"""

from __future__ import annotations

import math

from pretrax.config import ModelSection


def layer_group(cfg: ModelSection) -> int:
    """Layers per scanned unit: 1 when every layer is alike."""
    periods = []
    if cfg.moe.num_experts and cfg.moe.every > 1:
        periods.append(cfg.moe.every)
    if cfg.attention_window and cfg.global_every > 1:
        periods.append(cfg.global_every)
    return math.lcm(*periods) if periods else 1


def is_routed(cfg: ModelSection, index: int) -> bool:
    """Whether layer `index` (in its stack or its group) has routed experts: the every-th, 2 every-th, ..."""
    return cfg.moe.num_experts > 0 and (index + 1) % cfg.moe.every == 0


def attention_window(cfg: ModelSection, index: int) -> int:
    """Layer `index`'s sliding window: model.attention_window, or 0 (full) for every global_every-th layer."""
    if not cfg.attention_window or (cfg.global_every and (index + 1) % cfg.global_every == 0):
        return 0
    return cfg.attention_window


def routed_layers(cfg: ModelSection, n_layers: int) -> list[int]:
    """Indices (from 0) of a stack's MoE layers, in the order their statistics are stacked."""
    return [i for i in range(n_layers) if is_routed(cfg, i)]

"""Fold muP and depth-transfer multipliers into the weights, so an export is a plain model.

Under muP (models/parametrization.py) the forward pass multiplies the embedding
output by alpha_in, the logits by alpha_out / m, the attention scores by
sqrt(base_head_dim) / head_dim instead of 1/sqrt(head_dim), and, with
depth_alpha, every residual branch by r^-depth_alpha. Each multiplier acts on
something linear in one set of weights, so multiplying those weights gives the
same function under the standard parametrization (sp), which transformers runs:

  attention scale   query kernel (and bias) x scale * sqrt(head_dim)
  branch multiplier attention / cross-attention output and MLP down kernels (and biases)
  alpha_in          token (and learned position) table
  readout           untied: output kernel x alpha_out / m; tied (one table): the norm that
                    feeds only the logits x (alpha_out / m) / alpha_in
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from pretrax.config import Config, ParametrizationSection
from pretrax.errors import ConfigError
from pretrax.models.family import family_of
from pretrax.models.parametrization import resolve


def fold(flat: dict[str, np.ndarray], cfg: Config, *, inverse: bool = False) -> tuple[dict[str, np.ndarray], Config]:
    """(weights, config) of the sp model computing what `flat` computes under cfg's parametrization.

    inverse: the other way (import): `flat` are sp weights, returned are the weights that compute the
    same under cfg's parametrization (each factor divided instead of multiplied), and cfg itself.
    """
    m = cfg.model
    p = resolve(m, cfg.parametrization)
    out = dict(flat)

    def times(pattern: str, factor: float) -> None:
        if factor != 1.0:
            for name in out:
                if re.search(pattern, name):
                    out[name] = out[name] * np.float32(factor) if not inverse else out[name] / np.float32(factor)

    times(r"\.(attn|cross)\.query\.(kernel|bias)$", p.attention_scale(m.head_size) * math.sqrt(m.head_size))
    times(r"\.(attn|cross|mlp)\.(out|down)\.(kernel|bias)$", p.branch_mult)
    times(r"^(embed|positions)\.table$", p.input_mult)
    if m.tie_embeddings:
        readout = p.output_mult / p.input_mult
        if readout != 1.0:
            times(rf"^{re.escape(_readout_norm(cfg))}\.(scale|bias)$", readout)
    else:
        times(r"^unembed\.kernel$", p.output_mult)
    return out, cfg if inverse else dataclasses.replace(cfg, parametrization=ParametrizationSection())


def _readout_norm(cfg: Config) -> str:
    """The norm whose output only the (tied) output layer reads."""
    m = cfg.model
    if family_of(m).has_encoder:  # the decoder stack's own final norm
        return "decoder.final_norm"
    if m.final_norm:
        return "final_norm"
    if m.norm_position == "post":
        return f"blocks.{m.n_layers - 1}.mlp_norm"
    raise ConfigError("tied embeddings with muP multipliers (alpha_in, alpha_out) and no final norm cannot be "
                      "folded into one table; export needs model.final_norm=true or untied embeddings")

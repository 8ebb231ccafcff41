"""Models: generic layers, positions, attention and the decoder-only LM."""

from __future__ import annotations

import math

import jax
from flax import nnx

from pretrax.config import ModelSection
from pretrax.models.decoder import Decoder

__all__ = ["Decoder", "count_params"]


def count_params(cfg: ModelSection, vocab_size: int, max_seq_len: int) -> int:
    """Number of parameters, from shapes alone (nnx.eval_shape allocates nothing)."""
    model = nnx.eval_shape(lambda: Decoder(cfg, vocab_size=vocab_size, max_seq_len=max_seq_len, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

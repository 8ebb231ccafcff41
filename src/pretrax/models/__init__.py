"""Models: generic layers, positions, attention, the decoder-only LM and the encoder-decoder."""

from __future__ import annotations

import math

import jax
from flax import nnx

from pretrax.config import Config, ModelSection, ParametrizationSection
from pretrax.models.decoder import Decoder
from pretrax.models.encoder_decoder import EncoderDecoder
from pretrax.sizes import window as max_positions  # the learned position table's size

__all__ = ["Decoder", "EncoderDecoder", "build_model", "count_params", "make_model", "max_positions"]


def make_model(cfg: ModelSection, *, vocab_size: int, max_seq_len: int, rngs: nnx.Rngs,
               parametrization: ParametrizationSection | None = None) -> Decoder | EncoderDecoder:
    """The model cfg.kind names, in the given parametrization (None: sp). max_seq_len (the learned
    position table) is unused by the encoder-decoder."""
    if cfg.kind == "encoder_decoder":
        return EncoderDecoder(cfg, vocab_size=vocab_size, rngs=rngs, parametrization=parametrization)
    return Decoder(cfg, vocab_size=vocab_size, max_seq_len=max_seq_len, rngs=rngs, parametrization=parametrization)


def count_params(cfg: ModelSection, vocab_size: int, max_seq_len: int) -> int:
    """Number of parameters of either kind, from shapes alone (nnx.eval_shape allocates nothing)."""
    model = nnx.eval_shape(lambda: make_model(cfg, vocab_size=vocab_size, max_seq_len=max_seq_len, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def build_model(cfg: Config, vocab_size: int, seed: int | jax.Array) -> Decoder | EncoderDecoder:
    """A run's model from its whole config (sizes, positions, parametrization), parameters drawn from seed
    (an int, or the key jax.random.key(int) makes of it: the same draws)."""
    return make_model(cfg.model, vocab_size=vocab_size, max_seq_len=max_positions(cfg), rngs=nnx.Rngs(params=seed),
                      parametrization=cfg.parametrization)

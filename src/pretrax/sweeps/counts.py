"""A point's size for the results table: parameters (total and non-embedding), tokens and training FLOPs.

Computed from the config alone (nnx.eval_shape allocates nothing), so a dry
run shows them too. Non-embedding parameters leave out every lookup or
output table over the vocabulary and every position table (Kaplan et al.
2020's N): the input embedding, an untied output layer, learned positions and
the T5 relative position buckets.
"""

from __future__ import annotations

import functools
import math

import jax
from flax import nnx

from pretrax.config import Config, ModelSection, ParametrizationSection
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import step_flops
from pretrax.models import make_model, max_positions
from pretrax.sizes import resolve_sizes

EMBEDDING_NAMES = {"embed", "unembed", "positions", "relpos"}  # parameter path names of those tables


def point_counts(cfg: Config) -> dict[str, int | float]:
    sizes = resolve_sizes(cfg, config_tokenizer(cfg.data).vocab_size)
    vocab = sizes.vocab_size
    params = _param_shapes(cfg.model, cfg.parametrization, vocab, max_positions(cfg))
    total = embedding = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = math.prod(leaf.shape)
        total += size
        if EMBEDDING_NAMES & {str(getattr(k, "key", "")) for k in path}:
            embedding += size
    tokens = cfg.train.steps * sizes.tokens_per_step  # encoder-decoder: decoder tokens
    per_token = step_flops(cfg, vocab, params).per_token  # both model kinds; attention as train.mfu_attention counts it
    return {"params": total, "params_non_embedding": total - embedding, "tokens": tokens,
            "flops": per_token * tokens}


@functools.lru_cache(maxsize=256)
def _param_shapes(model: ModelSection, parametrization: ParametrizationSection, vocab: int, max_len: int):
    """The parameters' shapes (nnx.State of ShapeDtypeStructs). Cached: the points of a learning-rate or
    seed sweep share one model, and tracing its constructor is most of a 64-point dry run's time."""
    return nnx.state(nnx.eval_shape(lambda: make_model(model, vocab_size=vocab, max_seq_len=max_len,
                                                       rngs=nnx.Rngs(params=0), parametrization=parametrization)),
                     nnx.Param)

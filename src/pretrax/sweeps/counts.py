"""A point's size for the results table: parameters (total and non-embedding), tokens and training FLOPs.

Computed from the config alone (nnx.eval_shape allocates nothing), so a dry
run shows them too. Non-embedding parameters leave out every lookup or
output table over the vocabulary and every position table (Kaplan et al.
2020's N): the input embedding, an untied output layer, learned positions and
the T5 relative position buckets.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import step_flops
from pretrax.sizes import resolve_sizes
from pretrax.train.state import build_model

EMBEDDING_NAMES = {"embed", "unembed", "positions", "relpos"}  # parameter path names of those tables


def point_counts(cfg: Config) -> dict[str, int | float]:
    sizes = resolve_sizes(cfg, config_tokenizer(cfg.data).vocab_size)
    vocab = sizes.vocab_size
    params = nnx.state(nnx.eval_shape(lambda: build_model(cfg, vocab, 0)), nnx.Param)
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

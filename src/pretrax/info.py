"""`pretrax info`: the derived numbers of a config, computed without allocating the model or needing its devices."""

from __future__ import annotations

from flax import nnx

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import attention_note, step_flops
from pretrax.models.family import family_of
from pretrax.models.param_groups import param_table
from pretrax.sizes import resolve_sizes
from pretrax.train.state import build_model, param_count


def describe(cfg: Config) -> str:
    sizes = resolve_sizes(cfg, config_tokenizer(cfg.data).vocab_size)
    vocab = sizes.vocab_size
    abstract = nnx.eval_shape(lambda: build_model(cfg, vocab, 0))
    params = nnx.state(abstract, nnx.Param)
    n = param_count(params)
    flops = step_flops(cfg, vocab, params)
    m = cfg.model
    groups = param_table(nnx.get_partition_spec(params), params, tie_embeddings=m.tie_embeddings)
    lines = [
        f"parameters: {n}",
        # what 6N counts: every table but the lookup-only ones (embedding unless tied, positions)
        f"matmul parameters: {groups.size(side='encoder') + groups.size(side='decoder')}",
        family_of(m).describe(m, vocab, sizes.head_dim, sizes.kv_heads),
        f"tokens per step: {flops.tokens} ({sizes.row()})",
        f"FLOPs per token: {flops.per_token:.4g} ({attention_note(cfg.train.mfu_attention)})",
        f"FLOPs per step: {flops.total:.4g} (matmuls {flops.matmul:.4g}, attention {flops.attention:.4g})",
        f"training FLOPs: {flops.total * cfg.train.steps:.4g} ({cfg.train.steps} steps)",
    ]
    return "\n".join(lines)

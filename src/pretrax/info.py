"""`pretrax info`: the derived numbers of a config, computed without allocating the model or needing its devices."""

from __future__ import annotations

from flax import nnx

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import attention_note, step_flops
from pretrax.models.family import family_of
from pretrax.models.moe import expert_share
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
    groups = param_table(nnx.get_partition_spec(params), params, tie_embeddings=m.tie_embeddings,
                         expert_share=expert_share(m))
    lines = [f"parameters: {n}"]
    if m.moe.num_experts:  # what a token uses: the routed experts' share of the expert weights, all the rest
        moe = m.moe
        routed = sum(len(names) for _, names in family_of(m).routed_layer_names(m))
        lines.append(f"active parameters: {groups.size(active=True)} (per token: {moe.experts_per_token} of "
                     f"{moe.num_experts} experts in each of {routed} MoE layers)")
    lines += [
        # what 6N counts: every table but the lookup-only ones (embedding unless tied, positions); active only
        f"matmul parameters: {groups.size(side='encoder', active=True) + groups.size(side='decoder', active=True)}",
        family_of(m).describe(m, vocab, sizes.head_dim, sizes.kv_heads),
        f"tokens per step: {flops.tokens} ({sizes.row()})",
        f"FLOPs per token: {flops.per_token:.4g} ({attention_note(cfg.train.mfu_attention)})",
        f"FLOPs per step: {flops.total:.4g} (matmuls {flops.matmul:.4g}, attention {flops.attention:.4g})",
        f"training FLOPs: {flops.total * cfg.train.steps:.4g} ({cfg.train.steps} steps)",
    ]
    return "\n".join(lines)

"""`pretrax info`: the derived numbers of a config, computed without allocating the model or needing its devices."""

from __future__ import annotations

from flax import nnx

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import attention_note, matmul_params, step_flops
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
    lines = [f"parameters: {n}"]
    if sizes.kind == "encoder_decoder":
        layers = f"{sizes.encoder_layers}+{sizes.decoder_layers} layers"
        lines.append(f"model: encoder_decoder, {layers}, d_model {m.d_model}, {m.n_heads} heads x {sizes.head_dim}, "
                     f"d_ff {m.d_ff}, vocab {vocab}, {m.activation}, relative position bias")
        lines.append(f"tokens per step: {flops.tokens} ({sizes.row()})")
    else:
        lines += [
            f"matmul parameters: {matmul_params(n, m, vocab, sizes.window)}",
            f"model: {m.kind}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads x {sizes.head_dim}"
            f" ({sizes.kv_heads} kv), d_ff {m.d_ff}, vocab {vocab}, {m.positions} positions, {m.norm_position}-"
            f"{m.norm}, {m.activation}",
            f"tokens per step: {flops.tokens} ({sizes.row()})",
        ]
    lines += [
        f"FLOPs per token: {flops.per_token:.4g} ({attention_note(cfg.train.mfu_attention)})",
        f"FLOPs per step: {flops.total:.4g} (matmuls {flops.matmul:.4g}, attention {flops.attention:.4g})",
        f"training FLOPs: {flops.total * cfg.train.steps:.4g} ({cfg.train.steps} steps)",
    ]
    return "\n".join(lines)

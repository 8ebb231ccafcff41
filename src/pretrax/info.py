"""`pretrax info`: the derived numbers of a config, computed without allocating the model."""

from __future__ import annotations

from flax import nnx

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.flops import attention_note, matmul_params, step_flops
from pretrax.train.state import build_model, max_positions, model_vocab_size, param_count


def describe(cfg: Config) -> str:
    vocab = model_vocab_size(cfg, config_tokenizer(cfg.data).vocab_size)
    abstract = nnx.eval_shape(lambda: build_model(cfg, vocab, 0))
    params = nnx.state(abstract, nnx.Param)
    n = param_count(params)
    flops = step_flops(cfg, vocab, params)
    m = cfg.model
    lines = [f"parameters: {n}"]
    if m.kind == "encoder_decoder":
        layers = f"{m.n_encoder_layers or m.n_layers}+{m.n_layers} layers"
        lines.append(f"model: encoder_decoder, {layers}, d_model {m.d_model}, {m.n_heads} heads x {m.head_size}, "
                     f"d_ff {m.d_ff}, vocab {vocab}, {m.activation}, relative position bias")
        S, T = cfg.data.inputs_len or cfg.data.seq_len, cfg.data.targets_len or cfg.data.seq_len
        lines.append(f"tokens per step: {flops.tokens} ({cfg.train.batch_size} x {T} decoder tokens; "
                     f"{S} encoder tokens per row)")
    else:
        lines += [
            f"matmul parameters: {matmul_params(n, m, vocab, max_positions(cfg))}",
            f"model: {m.kind}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads x {m.head_size}"
            f" ({m.kv_heads} kv), d_ff {m.d_ff}, vocab {vocab}, {m.positions} positions, {m.norm_position}-{m.norm}, "
            f"{m.activation}",
            f"tokens per step: {flops.tokens} ({cfg.train.batch_size} x {cfg.data.seq_len})",
        ]
    lines += [
        f"FLOPs per token: {flops.per_token:.4g} ({attention_note(cfg.train.mfu_attention)})",
        f"FLOPs per step: {flops.total:.4g} (matmuls {flops.matmul:.4g}, attention {flops.attention:.4g})",
        f"training FLOPs: {flops.total * cfg.train.steps:.4g} ({cfg.train.steps} steps)",
    ]
    return "\n".join(lines)

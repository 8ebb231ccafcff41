"""The three transformers families pretrax maps onto, and how each one's weights are laid out.

  OpenAIGPT (OpenAIGPTLMHeadModel)      decoder, GPT-1: learned positions, post-LayerNorm, GELU (tanh),
                                        biases, tied, d_ff = 4 d_model
  Llama (LlamaForCausalLM)              decoder, modern: RoPE (halves paired, as positions.py), pre-RMSNorm,
                                        gated MLP (SwiGLU, or GeGLU as gelu_pytorch_tanh), GQA, tied or not
  T5 (T5ForConditionalGeneration)       encoder-decoder, T5.1.1 / UL2: relative position bias in block 0
                                        of each stack, pre-RMSNorm, no biases, gated-gelu / gated-silu / relu

Each family knows (a) whether a pretrax model fits it, naming the first feature that does not (export),
(b) the ModelSection values of a config.json (import), and (c) one Link per tensor: which pretrax weight
it is and how the layout differs. Layouts: pretrax kernels are einsum-shaped (D, N, H) and (N, H, D);
torch Linear weights are (out, in); OpenAIGPT's Conv1D weights are (in, out) with q, k, v side by side.
T5 attention has no 1/sqrt(head_dim): its query weight carries that factor. A T5 whose decoder output is
scaled by d_model^-0.5 before the tied output layer (scale_decoder_outputs) has that factor in its final
norm here. Weights are folded to the standard parametrization first (fold.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from pretrax.config import ModelSection
from pretrax.errors import ConfigError
from pretrax.models.family import family_of as pretrax_family_of


@dataclasses.dataclass(frozen=True)
class Link:
    """One HF tensor (or one of `parts` side-by-side slices of it, along its last axis) <-> one pretrax weight.

    layout: same (shapes equal), flat (pretrax (N, H) -> HF (N*H,)), linear (torch Linear: (out, in)),
    conv (Conv1D: (in, out)); n_in: how many leading pretrax axes are the input. factor: HF = pretrax x factor.
    """

    hf: str
    ours: str
    layout: str = "same"
    n_in: int = 1
    factor: float = 1.0
    part: int = 0
    parts: int = 1

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The whole HF tensor's shape, given the pretrax weight's."""
        size = math.prod(shape)
        if self.layout == "same":
            out = shape
        elif self.layout == "flat":
            out = (size,)
        else:
            n_in = math.prod(shape[: self.n_in])
            out = (size // n_in, n_in) if self.layout == "linear" else (n_in, size // n_in)
        return out[:-1] + (out[-1] * self.parts,)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        x = x * np.float32(self.factor) if self.factor != 1.0 else x
        if self.layout == "same":
            return x
        if self.layout == "flat":
            return x.reshape(-1)
        two = x.reshape(math.prod(x.shape[: self.n_in]), -1)
        return two.T if self.layout == "linear" else two

    def from_hf(self, whole: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        x = np.split(whole, self.parts, axis=-1)[self.part] if self.parts > 1 else whole
        x = (x.T if self.layout == "linear" else x).reshape(shape)
        return x / np.float32(self.factor) if self.factor != 1.0 else x


def _refuse(feature: str, family: str, needs: str) -> ConfigError:
    return ConfigError(f"{feature} cannot be exported: transformers' {family} needs {needs}")


def _dense(hf: str, ours: str, n_in: int, bias: bool, **kw) -> list[Link]:
    """A torch Linear: weight (out, in) [+ bias (out,)]."""
    links = [Link(f"{hf}.weight", f"{ours}.kernel", "linear", n_in, **kw)]
    if bias:
        links.append(Link(f"{hf}.bias", f"{ours}.bias", "flat", **kw))
    return links


# ---------------------------------------------------------------- OpenAIGPT

GPT_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}  # pretrax -> afn (HF's "gelu" is the tanh form, as ours)


def gpt_check(m: ModelSection) -> None:
    needs = {
        "model.norm": ("layernorm", "LayerNorm"),
        "model.norm_position": ("post", "post-norm"),
        "model.final_norm": (False, "no final norm"),
        "model.use_bias": (True, "biases"),
        "model.tie_embeddings": (True, "tied embeddings"),
    }
    for key, (want, what) in needs.items():
        if getattr(m, key.split(".")[1]) != want:
            raise _refuse(f"{key}={getattr(m, key.split('.')[1])}", "OpenAIGPT (learned positions)", what)
    if m.activation not in GPT_ACTIVATIONS:
        raise _refuse(f"model.activation={m.activation}", "OpenAIGPT", "an ungated gelu or relu MLP")
    if m.kv_heads != m.n_heads:
        raise _refuse(f"model.n_kv_heads={m.n_kv_heads}", "OpenAIGPT", "as many key/value heads as heads")
    if m.head_size * m.n_heads != m.d_model:
        raise _refuse(f"model.head_dim={m.head_dim}", "OpenAIGPT", "head_dim = d_model / n_heads")
    if m.d_ff != 4 * m.d_model:
        raise _refuse(f"model.d_ff={m.d_ff}", "OpenAIGPT", f"d_ff = 4 x d_model ({4 * m.d_model})")


def gpt_config(m: ModelSection, vocab: int, max_positions: int) -> dict[str, Any]:
    return {"architectures": ["OpenAIGPTLMHeadModel"], "model_type": "openai-gpt", "vocab_size": vocab,
            "n_positions": max_positions, "n_embd": m.d_model, "n_layer": m.n_layers, "n_head": m.n_heads,
            "afn": GPT_ACTIVATIONS[m.activation], "layer_norm_epsilon": m.norm_eps, "initializer_range": m.init_std,
            "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout, "tie_word_embeddings": True}


def gpt_model(c: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
    afn = c.get("afn", "gelu")
    if afn not in ("gelu", "gelu_new", "relu"):
        raise ConfigError(f"OpenAIGPT afn={afn!r} is not supported; pretrax has gelu (tanh) and relu")
    d = c["n_embd"]
    return {"kind": "decoder", "vocab_size": c["vocab_size"], "d_model": d, "n_layers": c["n_layer"],
            "n_heads": c["n_head"], "d_ff": 4 * d, "max_seq_len": c["n_positions"], "positions": "learned",
            "norm": "layernorm", "norm_position": "post", "norm_eps": c.get("layer_norm_epsilon", 1e-5),
            "final_norm": False, "activation": "relu" if afn == "relu" else "gelu", "use_bias": True,
            "tie_embeddings": True, "init_std": c.get("initializer_range", 0.02), "residual_init_scaling": False}


def gpt_links(m: ModelSection, c: dict[str, Any]) -> list[Link]:
    links = [Link("transformer.tokens_embed.weight", "embed.table"),
             Link("transformer.positions_embed.weight", "positions.table")]
    for i in range(m.n_layers):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        for k, name in enumerate(("query", "key", "value")):  # c_attn: [q | k | v] columns, heads in order
            links += [Link(f"{h}.attn.c_attn.weight", f"{b}.attn.{name}.kernel", "conv", 1, part=k, parts=3),
                      Link(f"{h}.attn.c_attn.bias", f"{b}.attn.{name}.bias", "flat", part=k, parts=3)]
        links += [Link(f"{h}.attn.c_proj.weight", f"{b}.attn.out.kernel", "conv", 2),
                  Link(f"{h}.attn.c_proj.bias", f"{b}.attn.out.bias"),
                  Link(f"{h}.ln_1.weight", f"{b}.attn_norm.scale"), Link(f"{h}.ln_1.bias", f"{b}.attn_norm.bias"),
                  Link(f"{h}.mlp.c_fc.weight", f"{b}.mlp.up.kernel", "conv"),
                  Link(f"{h}.mlp.c_fc.bias", f"{b}.mlp.up.bias"),
                  Link(f"{h}.mlp.c_proj.weight", f"{b}.mlp.down.kernel", "conv"),
                  Link(f"{h}.mlp.c_proj.bias", f"{b}.mlp.down.bias"),
                  Link(f"{h}.ln_2.weight", f"{b}.mlp_norm.scale"), Link(f"{h}.ln_2.bias", f"{b}.mlp_norm.bias")]
    return links


# ---------------------------------------------------------------- Llama

LLAMA_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}


def llama_check(m: ModelSection) -> None:
    if m.norm != "rmsnorm":
        raise _refuse(f"model.norm={m.norm} with rotary positions", "Llama (rotary positions)", "RMSNorm")
    if m.norm_position != "pre":
        raise _refuse("model.norm_position=post with rotary positions", "Llama", "pre-norm")
    if not m.final_norm:
        raise _refuse("model.final_norm=false with rotary positions", "Llama", "a final norm")
    if m.activation not in LLAMA_ACTIVATIONS:
        raise _refuse(f"model.activation={m.activation} with rotary positions", "Llama", "a gated MLP (swiglu, geglu)")


def llama_config(m: ModelSection, vocab: int, max_positions: int) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": m.d_model, "intermediate_size": m.d_ff, "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads, "num_key_value_heads": m.kv_heads, "head_dim": m.head_size,
            "hidden_act": LLAMA_ACTIVATIONS[m.activation], "max_position_embeddings": max_positions,
            "rms_norm_eps": m.norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
            "attention_bias": m.use_bias, "mlp_bias": m.use_bias, "tie_word_embeddings": m.tie_embeddings,
            "initializer_range": m.init_std, "attention_dropout": m.dropout}


def llama_model(c: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"Llama rope_type={kind!r} is not supported; pretrax has the default rotary positions")
    act = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}.get(c.get("hidden_act", "silu"))
    if act is None:
        raise ConfigError(f"Llama hidden_act={c['hidden_act']!r} is not supported; pretrax has silu (SwiGLU) and "
                          "gelu_pytorch_tanh (GeGLU)")
    if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
        raise ConfigError("Llama attention_bias != mlp_bias is not supported; pretrax's model.use_bias is both")
    n, d = c["num_attention_heads"], c["hidden_size"]
    head_dim = c.get("head_dim") or d // n
    return {"kind": "decoder", "vocab_size": c["vocab_size"], "d_model": d, "n_layers": c["num_hidden_layers"],
            "n_heads": n, "n_kv_heads": c.get("num_key_value_heads") or n,
            "head_dim": 0 if head_dim * n == d else head_dim, "d_ff": c["intermediate_size"], "positions": "rope",
            "rope_theta": float(rope.get("rope_theta", c.get("rope_theta", 10000.0))), "norm": "rmsnorm",
            "norm_position": "pre", "norm_eps": c.get("rms_norm_eps", 1e-6), "final_norm": True, "activation": act,
            "use_bias": bool(c.get("attention_bias", False)), "tie_embeddings": "lm_head.weight" not in tensors,
            "init_std": c.get("initializer_range", 0.02)}


def llama_links(m: ModelSection, c: dict[str, Any]) -> list[Link]:
    bias = m.use_bias
    links = [Link("model.embed_tokens.weight", "embed.table"), Link("model.norm.weight", "final_norm.scale")]
    if not m.tie_embeddings:
        links.append(Link("lm_head.weight", "unembed.kernel", "linear"))
    for i in range(m.n_layers):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        for hf, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            links += _dense(f"{h}.self_attn.{hf}", f"{b}.attn.{ours}", 1, bias)
        links += _dense(f"{h}.self_attn.o_proj", f"{b}.attn.out", 2, bias)
        for hf, ours in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
            links += _dense(f"{h}.mlp.{hf}", f"{b}.mlp.{ours}", 1, bias)
        links += [Link(f"{h}.input_layernorm.weight", f"{b}.attn_norm.scale"),
                  Link(f"{h}.post_attention_layernorm.weight", f"{b}.mlp_norm.scale")]
    return links


# ---------------------------------------------------------------- T5

T5_ACTIVATIONS = {"geglu": "gated-gelu", "swiglu": "gated-silu", "relu": "relu", "gelu": "gelu_new"}


def t5_check(m: ModelSection) -> None:
    if m.positions != "relative":
        raise _refuse(f"model.positions={m.positions}", "T5", "the relative position bias")
    if m.norm != "rmsnorm":
        raise _refuse(f"model.norm={m.norm} in the encoder-decoder", "T5", "RMSNorm")
    if m.use_bias:
        raise _refuse("model.use_bias=true in the encoder-decoder", "T5", "no biases")
    if m.kv_heads != m.n_heads:
        raise _refuse(f"model.n_kv_heads={m.n_kv_heads}", "T5", "as many key/value heads as heads")


def t5_config(m: ModelSection, vocab: int, max_positions: int) -> dict[str, Any]:
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": vocab,
            "d_model": m.d_model, "d_kv": m.head_size, "d_ff": m.d_ff, "num_layers": m.n_encoder_layers or m.n_layers,
            "num_decoder_layers": m.n_layers, "num_heads": m.n_heads,
            "relative_attention_num_buckets": m.relative_buckets,
            "relative_attention_max_distance": m.relative_max_distance, "layer_norm_epsilon": m.norm_eps,
            "feed_forward_proj": T5_ACTIVATIONS[m.activation], "dropout_rate": m.dropout,
            "is_encoder_decoder": True,
            # untied (T5.1.1, UL2): its own lm_head.weight and no output scaling, as T5.1.1's config.json says;
            # transformers 5 then warns that it will not tie the two different tensors, and computes untied
            "tie_word_embeddings": m.tie_embeddings, "scale_decoder_outputs": m.tie_embeddings}


def t5_model(c: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
    proj = c.get("feed_forward_proj", "relu")
    act = {v: k for k, v in T5_ACTIVATIONS.items()}.get(proj)
    if act is None:
        raise ConfigError(f"T5 feed_forward_proj={proj!r} is not supported; pretrax has "
                          f"{', '.join(T5_ACTIVATIONS.values())}")
    d, n, d_kv = c["d_model"], c["num_heads"], c["d_kv"]
    return {"kind": "encoder_decoder", "vocab_size": c["vocab_size"], "d_model": d,
            "n_layers": c.get("num_decoder_layers") or c["num_layers"], "n_encoder_layers": c["num_layers"],
            "n_heads": n, "head_dim": 0 if d_kv * n == d else d_kv, "d_ff": c["d_ff"], "positions": "relative",
            "relative_buckets": c.get("relative_attention_num_buckets", 32),
            "relative_max_distance": c.get("relative_attention_max_distance", 128), "norm": "rmsnorm",
            "norm_position": "pre", "norm_eps": c.get("layer_norm_epsilon", 1e-6), "final_norm": True,
            "activation": act, "use_bias": False, "tie_embeddings": "lm_head.weight" not in tensors}


def t5_scales_output(c: dict[str, Any]) -> bool:
    """Whether the decoder output is multiplied by d_model^-0.5 before a tied output layer."""
    return c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True) is not False)


def t5_links(m: ModelSection, c: dict[str, Any]) -> list[Link]:
    gated = m.activation in ("geglu", "swiglu")
    q_factor = m.head_size ** -0.5  # T5 attention has no 1/sqrt(head_dim): its query weight carries it
    final = math.sqrt(m.d_model) if m.tie_embeddings and t5_scales_output(c) else 1.0
    links = [Link("shared.weight", "embed.table"),
             Link("encoder.final_layer_norm.weight", "encoder.final_norm.scale"),
             Link("decoder.final_layer_norm.weight", "decoder.final_norm.scale", factor=final)]
    if not m.tie_embeddings:
        links.append(Link("lm_head.weight", "unembed.kernel", "linear"))
    for stack, n_layers in (("encoder", m.n_encoder_layers or m.n_layers), ("decoder", m.n_layers)):
        links.append(Link(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          f"{stack}.relpos.embedding"))
        for i in range(n_layers):
            h, b = f"{stack}.block.{i}.layer", f"{stack}.blocks.{i}"
            attentions = [("0.SelfAttention", "attn")] + ([("1.EncDecAttention", "cross")] if stack == "decoder" else [])
            for hf, ours in attentions:
                links += _dense(f"{h}.{hf}.q", f"{b}.{ours}.query", 1, False, factor=q_factor)
                links += _dense(f"{h}.{hf}.k", f"{b}.{ours}.key", 1, False)
                links += _dense(f"{h}.{hf}.v", f"{b}.{ours}.value", 1, False)
                links += _dense(f"{h}.{hf}.o", f"{b}.{ours}.out", 2, False)
            links += [Link(f"{h}.0.layer_norm.weight", f"{b}.attn_norm.scale")]
            if stack == "decoder":
                links += [Link(f"{h}.1.layer_norm.weight", f"{b}.cross_norm.scale")]
            ff = 2 if stack == "decoder" else 1
            links += [Link(f"{h}.{ff}.layer_norm.weight", f"{b}.mlp_norm.scale")]
            if gated:
                links += _dense(f"{h}.{ff}.DenseReluDense.wi_0", f"{b}.mlp.gate", 1, False)
                links += _dense(f"{h}.{ff}.DenseReluDense.wi_1", f"{b}.mlp.up", 1, False)
            else:
                links += _dense(f"{h}.{ff}.DenseReluDense.wi", f"{b}.mlp.up", 1, False)
            links += _dense(f"{h}.{ff}.DenseReluDense.wo", f"{b}.mlp.down", 1, False)
    return links


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    architecture: str
    model_type: str
    check: Callable[[ModelSection], None]  # export: ConfigError naming a feature the family cannot express
    config: Callable[[ModelSection, int, int], dict]  # export: config.json (model, vocab size, max positions)
    model: Callable[[dict, set], dict]  # import: config.json (+ tensor names) -> model.* values
    links: Callable[[ModelSection, dict], list[Link]]  # both: tensor <-> weight (HF config for T5's output scale)


FAMILIES = (
    Family("OpenAIGPT", "OpenAIGPTLMHeadModel", "openai-gpt", gpt_check, gpt_config, gpt_model, gpt_links),
    Family("Llama", "LlamaForCausalLM", "llama", llama_check, llama_config, llama_model, llama_links),
    Family("T5", "T5ForConditionalGeneration", "t5", t5_check, t5_config, t5_model, t5_links),
)


def supported() -> str:
    return ", ".join(f.architecture for f in FAMILIES)


def family_of_model(m: ModelSection) -> Family:
    """The family a pretrax model exports to (ConfigError naming the feature none can express)."""
    if m.moe.num_experts:
        raise ConfigError(f"model.moe.num_experts={m.moe.num_experts} cannot be exported: transformers' "
                          f"{', '.join(f.name for f in FAMILIES)} have no routed experts (Mixtral export is not "
                          "written yet)")
    if pretrax_family_of(m).has_encoder:
        family = FAMILIES[2]
    elif m.positions == "learned":
        family = FAMILIES[0]
    elif m.positions == "rope":
        family = FAMILIES[1]
    else:
        raise ConfigError(f"model.positions={m.positions} cannot be exported: transformers' OpenAIGPT needs learned "
                          "positions, Llama rotary ones")
    family.check(m)
    return family


def family_of_config(c: dict[str, Any], path: str) -> Family:
    """The family of a config.json (ConfigError naming its architecture and the supported ones)."""
    archs = c.get("architectures") or []
    for family in FAMILIES:
        if family.architecture in archs or (not archs and c.get("model_type") == family.model_type):
            return family
    name = archs[0] if archs else c.get("model_type", "<none given>")
    raise ConfigError(f"{path} is architecture {name!r}, which pretrax cannot import; supported: {supported()}")

"""Typed, validated run configuration.

The schema below is the ONE place defaults live; YAML files in configs/ only
state what differs. A config is a tree of frozen dataclasses whose shape the
YAML mirrors. ``key=value`` overrides address any field by its dotted path.
Unknown keys and wrong types raise ConfigError naming the key and the closest
valid one.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import yaml

from pretrax.errors import ConfigError
from pretrax.storage import check_url


@dataclass(frozen=True)
class RunSection:
    dir: str = "runs/tiny"  # where config.yaml, metrics, TensorBoard and checkpoints go: a local path or gs://bucket/path
    seed: int = 0  # one seed for parameters, data order and sampling


@dataclass(frozen=True)
class MoeSection:
    """Routed experts in place of the dense MLP (models/moe.py, docs/moe.md); num_experts 0: dense."""

    num_experts: int = 0  # experts per MoE layer (Mixtral: 8); 0 keeps every MLP dense
    experts_per_token: int = 2  # top-k: 1 as in Switch, 2 as in GShard and Mixtral
    every: int = 1  # an MoE layer every k layers (the k-th, 2k-th, ...), the others dense; Switch and GShard: 2
    capacity_factor: float = 1.25  # an expert takes k * T * capacity_factor / E tokens of a row; the rest drop
    dropless: bool = False  # route every token (grouped matmuls, jax.lax.ragged_dot); capacity_factor unused
    d_ff: int = 0  # each expert's hidden width; 0: model.d_ff
    shared_experts: int = 0  # always-on experts (DeepSeekMoE), one MLP of this many experts' width
    load_balance_loss: float = 0.01  # weight of Switch's balance loss E * sum(load * mean prob), per MoE layer
    router_z_loss: float = 0.001  # weight of ST-MoE's router z-loss mean(logsumexp(router logits)^2), per layer


@dataclass(frozen=True)
class ModelSection:
    kind: Literal["decoder", "encoder_decoder"] = "decoder"
    vocab_size: int = 0  # 0: the tokenizer's size rounded up to a multiple of 128
    d_model: int = 256
    n_layers: int = 4  # encoder_decoder: the decoder's depth
    n_encoder_layers: int = 0  # encoder_decoder: the encoder's depth; 0: same as n_layers
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head); fewer gives grouped-query attention
    head_dim: int = 0  # 0: d_model // n_heads
    d_ff: int = 1024
    max_seq_len: int = 0  # size of the learned position table; 0: data.seq_len
    # relative: T5 bias (encoder_decoder); alibi: linear bias on the scores (either kind); xpos: RoPE with decay
    positions: Literal["rope", "learned", "relative", "none", "alibi", "xpos"] = "rope"
    relative_buckets: int = 32  # relative: buckets of the T5 relative position bias
    relative_max_distance: int = 128  # relative: distances beyond this share the last bucket
    rope_theta: float = 10000.0
    xpos_scale_base: float = 512.0  # xpos: positions per factor zeta of decay (Sun et al. 2022)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_position: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-6
    final_norm: bool = True  # a norm before the output layer (pre-norm models need it)
    activation: Literal["swiglu", "geglu", "gelu", "relu"] = "swiglu"
    use_bias: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    # GPT-2's residual init: projections into the residual stream start at init_std / sqrt(2 n_layers);
    # false: GPT-1's plain normal(init_std) for every matrix
    residual_init_scaling: bool = True
    dropout: float = 0.0  # training only: embedding output, attention probabilities, residual branches (GPT-1: 0.1)
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype
    scan_layers: bool = False  # one compiled layer body scanned L times (fast compiles for deep models)
    remat: Literal["none", "full", "dots", "attention"] = "none"  # rematerialise each layer in the backward pass
    attention: Literal["xla", "cudnn", "splash", "ring"] = "xla"  # backend: models/attention_backends.py
    # xla attention: queries per block, so that the float32 T x S scores (and their gradient) exist one block
    # at a time; the same numbers (each row's softmax still spans every key). 0: all T at once
    attention_query_chunk: int = 1024
    # sliding-window (local) self-attention: a query sees the keys less than this many positions away; 0: all
    attention_window: int = 0
    global_every: int = 0  # with attention_window: every k-th layer attends in full (Gemma 2: 2); 0: every layer local
    moe: MoeSection = field(default_factory=MoeSection)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


@dataclass(frozen=True)
class SourceSection:
    """One corpus: the embedded stdlib, local text or JSON-lines files, or a tfds dataset."""

    source: Literal["stdlib", "text", "jsonl", "tfds"] = "stdlib"  # stdlib: the interpreter's own source and docs
    paths: tuple[str, ...] = ()  # text and jsonl: file paths or globs
    text_field: str = "text"  # jsonl and tfds: the field that holds a document's text
    text_split: Literal["file", "blank_lines"] = "file"  # text: one document per file, or per blank-line block
    tfds_name: str = ""  # tfds: name[:version], e.g. c4/en:3.0.1
    tfds_split: str = "train"
    # tfds: the split evaluated on; auto: "validation" when the dataset has one (what `pretrax data prepare`
    # writes), else data.heldout_percent of tfds_split; "": always hold out data.heldout_percent of tfds_split
    tfds_eval_split: str = "auto"
    data_dir: str = ""  # tfds: the data_dir holding the prepared dataset (local path or gs://)
    weight: float = 1.0  # share of documents drawn from this source in a mixture


@dataclass(frozen=True)
class DenoiserSection:
    """One UL2 denoiser: span corruption (R/X) or sequential prefix-LM (S). See pretrax/data/objectives.py."""

    kind: Literal["span", "prefix"] = "span"
    mean_span: float = 3.0  # span: mean noise span length (mu)
    noise_density: float = 0.15  # span: share of tokens masked (r)
    weight: float = 1.0  # share of examples given to this denoiser
    mode_token: str = "[NLU]"  # prepended to the inputs; "" for none
    name: str = ""  # the metrics suffix (loss_R, loss_S, loss_X); "" derives it from the mode token
    # span: rotate each mask to a random start (never cutting a span); false keeps T5's layout, which ends
    # in noise (a single-span mask always masks the tail), as the released UL2 code does. docs/objectives.md
    roll: bool = False


@dataclass(frozen=True)
class DataSection(SourceSection):
    """The input pipeline: one source (the fields above) or a weighted `mixture` of sources."""

    mixture: tuple[SourceSection, ...] = ()  # when given, these sources replace the single one above
    tokenizer: str = "bytes"  # bytes, the path of a SentencePiece .model file, or none (token ids only: pretrax import)
    seq_len: int = 256
    objective: Literal["causal_lm", "prefix_lm", "span_corruption", "ul2"] = "causal_lm"
    denoisers: tuple[DenoiserSection, ...] = ()  # ul2: the mixture; empty: the paper's seven (objectives.py)
    inputs_len: int = 0  # encoder-decoder: encoder length (0: data.seq_len)
    targets_len: int = 0  # encoder-decoder: decoder length (0: data.seq_len)
    num_sentinels: int = 100  # span-corruption sentinels (T5's extra ids), the top ids of the vocabulary
    # denoising objectives: cut examples from the documents concatenated (eos between) at each denoiser's raw
    # length, as T5/UL2 do; false: examples per document (short documents make short examples)
    concat_documents: bool = True
    heldout_percent: float = 2.0  # share of documents held out for eval, chosen by a hash of their name
    shuffle: bool = True
    num_workers: int = 0  # worker processes for tokenize + objective; 0: in the training process
    prefetch: int = 2  # batches prepared ahead of the train step

    @property
    def sources(self) -> tuple[SourceSection, ...]:
        """The sources to read: the mixture, or this section itself as the one source."""
        return self.mixture or (self,)


@dataclass(frozen=True)
class TrainSection:
    steps: int = 500
    batch_size: int = 16  # global batch, in sequences, per optimizer step
    grad_accum: int = 1  # micro-batches per step; batch_size must divide evenly
    log_every: int = 10
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 8
    sample_tokens: int = 200  # length of the sample printed at the end; 0: none
    eval_objective: Literal["same", "causal_lm"] = "same"  # causal_lm: held-out next-token bits per byte for any objective
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"  # what a non-finite loss or gradient does
    peak: str = "auto"  # MFU's per-device peak: auto (table by device kind), measure, or TFLOP/s as a number
    mfu_attention: Literal["full", "causal"] = "full"  # model FLOPs: causal attention in full (PaLM) or halved
    z_loss: float = 0.0  # z_loss * log(Z)^2 added to each token's loss (T5X/PaLM: 1e-4); logged as z_loss; 0: off
    # positions whose float32 logits the loss forms at once (each block rematerialised; the same numbers);
    # 0: all T. Decoder family, without z-loss or dropout; the whole T when it does not divide it
    loss_chunk: int = 1024


@dataclass(frozen=True)
class ParametrizationSection:
    """How init, learning rates and output multipliers scale with width (muP) and depth."""

    kind: Literal["sp", "mup"] = "sp"  # sp: standard; mup: maximal update (Tensor Programs V)
    base_d_model: int = 0  # mup: the width the hyperparameters were tuned at; 0: model.d_model (m = 1)
    base_n_layers: int = 0  # depth transfer: the depth they were tuned at; 0: model.n_layers
    alpha_in: float = 1.0  # mup: embedding output multiplier
    alpha_out: float = 1.0  # mup: readout multiplier (scaled by base_d_model / d_model)
    zero_init_query: bool = True  # mup: start the query projection at zero
    zero_init_readout: bool = True  # mup: start an untied output layer at zero
    depth_alpha: float = 0.0  # residual branches scaled by (n_layers / base_n_layers)^-depth_alpha; 0: off
    # true: a matrix's decoupled weight decay takes its LR factor too (lr * factor * wd: microsoft/mup's
    # MuAdamW with decoupled_wd=True); false: lr * wd for every matrix at every width (MuAdamW's default)
    scale_weight_decay: bool = False


@dataclass(frozen=True)
class OptimSection:
    # adamw; or adafactor as T5 trains (factored second moments, decay 0.8, update clipping 1.0, steps relative
    # to each tensor's RMS, no momentum; train/optimizer.py): then b1, b2, eps and mu_dtype are unused, lr is the
    # relative step (T5: 1e-2) and weight_decay still applies as lr * wd (T5 trained with 0)
    name: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: Literal["cosine", "linear", "constant", "rsqrt"] = "cosine"  # rsqrt: T5's, held for warmup_steps
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW); matrices only, never norms or biases
    clip_norm: float = 1.0  # global-norm clipping; 0: off
    mu_dtype: Literal["float32", "bfloat16"] = "float32"  # Adam's first moment; bfloat16 halves its memory


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 100
    keep: int = 3
    async_save: bool = True


DEFAULT_RULES: dict[str, Any] = {
    # logical axis -> mesh axis (or list of mesh axes, or null for replicated)
    "batch": ["data", "fsdp", "expert"],  # outside the experts the expert axis splits the batch
    "expert": "expert",  # an MoE layer's experts (E, ...)
    "router": None,  # the router's output axis (E logits per token): tiny, replicated
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "length": "context",  # the sequence axis of activations and batches: split only by context parallelism
    "layers": None,
    "norm": None,
    "relpos_buckets": None,
    "act_embed": None,  # the residual stream's feature axis (activations only; weights use 'embed')
}


@dataclass(frozen=True)
class EvalSection:
    """Downstream tasks scored while training (pretrax.evaluation, docs/evaluation.md): GPT-1's zero-shot
    probes (qa, acceptability, cloze) and lm-eval tasks (evals/: pretrax_mc, ...; or lm-eval's own)."""

    tasks: tuple[str, ...] = ()  # empty: held-out loss only
    every: int = 0  # steps between task evaluations; 0: with the held-out loss (train.eval_every, and the end)
    limit: int = 0  # at most this many examples per task; 0: all
    batch_size: int = 8  # sequences per scoring pass (rounded up to a multiple of the data-parallel devices)


@dataclass(frozen=True)
class MeshSection:
    data: int = -1  # -1: all devices left over by the other axes
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1  # splits the experts of MoE layers (and the batch elsewhere): expert parallelism
    context: int = 1  # splits the sequence (context parallelism): attention gathers the keys and values
    dcn_data: int = 1  # TPU slices: an outer data axis over DCN; data, fsdp and tensor are then per slice
    rules: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RULES))


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    parametrization: ParametrizationSection = field(default_factory=ParametrizationSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-path overrides applied: cfg.replace(**{"model.d_model": 64})."""
        return from_dict(self.to_dict(), [f"{k}={_dump_value(v)}" for k, v in overrides.items()])


MESH_AXES = ("data", "fsdp", "expert", "context", "tensor")
# xPos decays a rotary score by direction (queries up, keys down): defined for causal attention, not an encoder
POSITIONS_BY_KIND = {"decoder": ("rope", "learned", "none", "alibi", "xpos"), "encoder_decoder": ("relative", "alibi")}


# ---------------------------------------------------------------- loading


def load(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(os.fspath(path), "config file", examples="see configs/ for examples",
                                holds="a mapping of sections")
    return from_dict(raw, overrides)


def read_yaml_mapping(path: str, what: str, *, examples: str, holds: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a config, a sweep); one-line ConfigErrors otherwise.

    what names the file in messages ("config file"), examples says where to find good ones,
    holds what the mapping should be.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist ({examples})")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{what} {path!r} is not valid YAML: {first}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path!r} is not UTF-8 text (byte {e.start}); give a YAML file, "
                          f"{examples}") from None
    except OSError as e:
        raise ConfigError(f"{what} {path!r} cannot be read ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path!r} must hold {holds}, got {type(raw).__name__}")
    return raw


def from_dict(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = _deep_copy(raw)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    cfg = _build(Config, raw, prefix="")
    validate(cfg)
    return cfg


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. model.d_model=256")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    cls: Any = Config
    for i, part in enumerate(parts):
        fields = _fields_of(cls)
        if fields is not None and part not in fields:
            _unknown_key(".".join(parts[: i + 1]), [".".join(parts[:i] + [f]) for f in fields])
        if i == len(parts) - 1:
            node[part] = value
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
        cls = fields[part] if fields is not None else None  # below a free-form mapping (mesh.rules)


def _fields_of(cls: Any) -> dict[str, Any] | None:
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return None


def _unknown_key(key: str, valid: list[str]) -> None:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(sorted(valid))}"
    raise ConfigError(f"unknown config key {key!r}{hint}")


def _build(cls: Any, raw: Any, prefix: str) -> Any:
    fields = _fields_of(cls)
    assert fields is not None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {raw!r}")
    for key in raw:
        if key not in fields:
            _unknown_key(prefix + str(key), [prefix + f for f in fields])
    kwargs = {}
    for name, typ in fields.items():
        if name not in raw:
            continue
        path = prefix + name
        if _fields_of(typ) is not None:
            kwargs[name] = _build(typ, raw[name] if raw[name] is not None else {}, path + ".")
        elif typing.get_origin(typ) is tuple and _fields_of(typing.get_args(typ)[0]) is not None:
            items = raw[name] if isinstance(raw[name], (list, tuple)) else [raw[name]]
            kwargs[name] = tuple(
                _build(typing.get_args(typ)[0], item, f"{path}[{i}].") for i, item in enumerate(items)
            )
        elif typing.get_origin(typ) is collections.abc.Mapping and isinstance(raw[name], Mapping):
            # mappings (mesh.rules) are merged onto the schema's default, so YAML states only changes
            default = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory()
            kwargs[name] = {**default, **raw[name]}
        else:
            kwargs[name] = _coerce(path, typ, raw[name])
    return cls(**kwargs)


def _coerce(path: str, typ: Any, value: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"config key {path!r} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}"
            )
        return value
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {path!r} expects a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:  # tuple[X, ...]; a single value counts as a one-item list
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(f"{path}[{i}]", typing.get_args(typ)[0], v) for i, v in enumerate(items))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TypeError(f"config schema type {typ!r} of {path!r} is not supported")
    raise ConfigError(f"config key {path!r} expects {typ.__name__}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------- validation


def validate(cfg: Config) -> None:
    """Checks that need more than one field's type. Raise ConfigError on the first problem."""
    check_finite(cfg)
    positive = {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "train.log_every": cfg.train.log_every,
        "train.eval_batches": cfg.train.eval_batches,
        "data.seq_len": cfg.data.seq_len,
        "checkpoint.every": cfg.checkpoint.every,
        "checkpoint.keep": cfg.checkpoint.keep,
        "model.d_model": cfg.model.d_model,
        "model.n_layers": cfg.model.n_layers,
        "model.n_heads": cfg.model.n_heads,
        "model.d_ff": cfg.model.d_ff,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be a positive integer, got {value}")
    non_negative = {
        "train.eval_every": cfg.train.eval_every,
        "train.sample_tokens": cfg.train.sample_tokens,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "model.vocab_size": cfg.model.vocab_size,
        "model.n_kv_heads": cfg.model.n_kv_heads,
        "model.head_dim": cfg.model.head_dim,
        "model.max_seq_len": cfg.model.max_seq_len,
        "model.attention_query_chunk": cfg.model.attention_query_chunk,
        "model.attention_window": cfg.model.attention_window,
        "model.global_every": cfg.model.global_every,
        "train.loss_chunk": cfg.train.loss_chunk,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.clip_norm": cfg.optim.clip_norm,
        "data.num_sentinels": cfg.data.num_sentinels,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {value}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg.optim.lr}")
    if not cfg.optim.eps > 0:
        raise ConfigError(f"config key 'optim.eps' must be > 0 (it keeps Adam's update finite), got {cfg.optim.eps}")
    for key in ("b1", "b2"):  # Adam's moment decays: 1 or more never forgets (or grows), and diverges
        if not 0 <= getattr(cfg.optim, key) < 1:
            raise ConfigError(f"config key 'optim.{key}' must be in [0, 1), got {getattr(cfg.optim, key)}")
    validate_training_recipe(cfg)
    if not cfg.model.rope_theta > 0:
        raise ConfigError(f"config key 'model.rope_theta' must be > 0, got {cfg.model.rope_theta}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"config key 'optim.min_lr_ratio' must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if not 0 <= cfg.data.heldout_percent < 100:
        raise ConfigError(f"config key 'data.heldout_percent' must be in [0, 100), got {cfg.data.heldout_percent}")
    for i, src in enumerate(cfg.data.mixture):
        if not src.weight > 0:
            raise ConfigError(f"config key 'data.mixture[{i}].weight' must be > 0, got {src.weight}")
    if cfg.data.num_workers < 0 or cfg.data.prefetch < 0:
        raise ConfigError("config keys 'data.num_workers' and 'data.prefetch' must be >= 0")
    m = cfg.model
    if m.head_dim == 0 and m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}), or set model.head_dim"
        )
    if m.n_heads % m.kv_heads:
        raise ConfigError(f"model.n_heads ({m.n_heads}) must be a multiple of model.n_kv_heads ({m.kv_heads})")
    if m.positions not in POSITIONS_BY_KIND[m.kind]:
        raise ConfigError(
            f"model.positions={m.positions!r} does not fit model.kind={m.kind!r}: the encoder-decoder uses "
            "'relative' (T5 bias) or 'alibi', the decoder 'rope', 'learned', 'none', 'alibi' or 'xpos'"
        )
    if m.positions in ("rope", "xpos") and m.head_size % 2:
        raise ConfigError(f"rotary positions need an even head size, got {m.head_size}")
    if m.attention_window > cfg.data.seq_len:
        raise ConfigError(f"model.attention_window ({m.attention_window}) is longer than the sequence "
                          f"(data.seq_len={cfg.data.seq_len}); use at most {cfg.data.seq_len}, or 0 for full attention")
    if m.global_every and not m.attention_window:
        raise ConfigError(f"model.global_every={m.global_every} interleaves full-attention layers with sliding-window "
                          "ones, but model.attention_window is 0 (every layer is full); set a window")
    if m.global_every and (m.n_layers % m.global_every or (m.n_encoder_layers or m.n_layers) % m.global_every):
        raise ConfigError(f"model.n_layers ({m.n_layers}) must be a multiple of model.global_every ({m.global_every})"
                          + (f", and so must model.n_encoder_layers ({m.n_encoder_layers})"
                             if m.kind == "encoder_decoder" and m.n_encoder_layers else ""))
    if not m.xpos_scale_base > 0:
        raise ConfigError(f"config key 'model.xpos_scale_base' must be > 0, got {m.xpos_scale_base}")
    if m.positions == "learned" and m.max_seq_len and m.max_seq_len < cfg.data.seq_len:
        raise ConfigError(
            f"model.max_seq_len ({m.max_seq_len}) is shorter than data.seq_len ({cfg.data.seq_len})"
        )
    validate_parametrization(cfg.parametrization, m)
    validate_moe(m, cfg.mesh)
    if not cfg.run.dir:
        raise ConfigError("run.dir is empty; give a local directory or gs://bucket/path")
    check_url(cfg.run.dir, "run.dir")  # s3://, hdfs://: refused here, never a local folder named "s3:"
    check_peak(cfg.train.peak)  # refused before a run dir is written
    if cfg.eval.every < 0 or cfg.eval.limit < 0 or cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.every and eval.limit must be >= 0 (0: with train.eval_every; all examples) and "
                          f"eval.batch_size >= 1, got {cfg.eval.every}, {cfg.eval.limit} and {cfg.eval.batch_size}")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.grad_accum ({cfg.train.grad_accum})"
        )
    for axis in MESH_AXES:
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"config key 'mesh.{axis}' must be a positive integer or -1, got {size}")
    if cfg.mesh.dcn_data < 1:
        raise ConfigError(f"config key 'mesh.dcn_data' must be a positive integer (slices), got {cfg.mesh.dcn_data}")
    if sum(getattr(cfg.mesh, a) == -1 for a in MESH_AXES) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.expert, mesh.context, mesh.tensor may be -1")
    if cfg.mesh.context > 1:
        lengths = {"data.seq_len": cfg.data.seq_len}
        if m.kind == "encoder_decoder":
            lengths = {"data.inputs_len": cfg.data.inputs_len or cfg.data.seq_len,
                       "data.targets_len": cfg.data.targets_len or cfg.data.seq_len}
        for key, length in lengths.items():
            if length % cfg.mesh.context:
                raise ConfigError(f"mesh.context={cfg.mesh.context} splits the sequence, but {key}={length} is not "
                                  f"divisible by it; use a length that is a multiple of {cfg.mesh.context}")
    for logical, target in cfg.mesh.rules.items():
        targets = target if isinstance(target, (list, tuple)) else [target]
        for t in targets:
            if t is not None and t not in MESH_AXES:
                raise ConfigError(
                    f"mesh.rules.{logical} maps to unknown mesh axis {t!r}; valid: {', '.join(MESH_AXES)} or null"
                )


def check_peak(spec: str) -> str:
    """train.peak, checked before any work: auto, measure, or a positive finite number."""
    spec = str(spec).strip()
    if spec not in ("auto", "measure"):
        try:
            number = float(spec)
        except ValueError:
            number = float("nan")
        if not 0 < number < float("inf"):
            raise ConfigError(f"train.peak must be 'auto', 'measure' or a positive number of TFLOP/s, got {spec!r}")
    return spec


def check_finite(obj: Any, prefix: str = "") -> None:
    """Every float field of the schema is finite: NaN or inf passes `x > 0`-style checks and then trains to NaN."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_finite(value, key + ".")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_finite(item, f"{key}[{i}].")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value}")


def validate_training_recipe(cfg: Config) -> None:
    """Optimizer, z-loss and dropout: Adam-only settings are refused under Adafactor rather than ignored."""
    o = cfg.optim
    if o.name == "adafactor":
        adam_only = [k for k in ("b1", "b2", "eps", "mu_dtype") if getattr(o, k) != getattr(OptimSection, k)]
        if adam_only:
            keys = ", ".join(f"optim.{k}" for k in adam_only)
            raise ConfigError(f"{keys} {'is' if len(adam_only) == 1 else 'are'} Adam's and unused by optim.name="
                              "adafactor (no first moment; decay 0.8, epsilon 1e-30 fixed); remove it or use adamw")
    if cfg.train.z_loss < 0:
        raise ConfigError(f"config key 'train.z_loss' must be >= 0 (0: off; T5X uses 1e-4), got {cfg.train.z_loss}")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.dropout > 0 and cfg.model.attention != "xla":
        raise ConfigError(f"model.dropout drops attention probabilities, which model.attention={cfg.model.attention} "
                          "never forms whole; use model.attention=xla or model.dropout=0")


def validate_moe(m: ModelSection, mesh: MeshSection) -> None:
    """model.moe against itself, the depth and the mesh's expert axis."""
    moe = m.moe
    if moe.num_experts < 0 or moe.d_ff < 0 or moe.shared_experts < 0:
        raise ConfigError(f"model.moe.num_experts, d_ff and shared_experts must be >= 0, got {moe.num_experts}, "
                          f"{moe.d_ff} and {moe.shared_experts}")
    if moe.num_experts == 0:
        if mesh.expert not in (1, -1):
            raise ConfigError(f"mesh.expert={mesh.expert} splits experts, but model.moe.num_experts is 0 (a dense "
                              "model); set model.moe.num_experts or mesh.expert=1")
        return
    if not 1 <= moe.experts_per_token <= moe.num_experts:
        raise ConfigError(f"model.moe.experts_per_token ({moe.experts_per_token}) must be between 1 and "
                          f"model.moe.num_experts ({moe.num_experts})")
    if not moe.capacity_factor > 0:
        raise ConfigError(f"model.moe.capacity_factor must be > 0, got {moe.capacity_factor} (for no dropping: "
                          "model.moe.dropless=true)")
    if moe.every < 1 or m.n_layers % moe.every or (m.n_encoder_layers or m.n_layers) % moe.every:
        raise ConfigError(f"model.n_layers ({m.n_layers}) must be a multiple of model.moe.every ({moe.every})"
                          + (f", and so must model.n_encoder_layers ({m.n_encoder_layers})"
                             if m.kind == "encoder_decoder" and m.n_encoder_layers else ""))
    if moe.load_balance_loss < 0 or moe.router_z_loss < 0:
        raise ConfigError(f"model.moe.load_balance_loss and router_z_loss must be >= 0, got "
                          f"{moe.load_balance_loss} and {moe.router_z_loss}")
    if mesh.expert > 1 and moe.num_experts % mesh.expert:
        raise ConfigError(f"model.moe.num_experts ({moe.num_experts}) must be divisible by mesh.expert "
                          f"({mesh.expert})")


def validate_parametrization(p: ParametrizationSection, m: ModelSection) -> None:
    """The base shape must be a whole model: a positive width whose head dim is whole."""
    for key in ("base_d_model", "base_n_layers", "depth_alpha"):
        if getattr(p, key) < 0:
            raise ConfigError(f"config key 'parametrization.{key}' must be >= 0 (0: this model's), got {getattr(p, key)}")
    if not (p.alpha_in > 0 and p.alpha_out > 0):
        raise ConfigError(f"parametrization.alpha_in and alpha_out must be > 0, got {p.alpha_in} and {p.alpha_out}")
    if p.kind == "mup" and p.base_d_model and m.head_dim == 0 and p.base_d_model % m.n_heads:
        raise ConfigError(
            f"parametrization.base_d_model ({p.base_d_model}) must be divisible by model.n_heads ({m.n_heads}): "
            "the base model's head dim is base_d_model / n_heads (or set model.head_dim to keep it fixed)"
        )


# ---------------------------------------------------------------- helpers


def to_plain(obj: Any) -> Any:
    """A section (or any config value) as plain dicts, lists and scalars, as in to_dict()."""
    return _to_plain(obj)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def _dump_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def get_dotted(tree: Any, dotted: str) -> Any:
    """A plain config dict's value at a dotted key ("optim.lr"), or None where there is none."""
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, Mapping) else None
    return tree


def diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys

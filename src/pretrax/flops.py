"""Model FLOP accounting (PaLM appendix B), shared by info, training logs and bench.

Training FLOPs = 3 x forward (the backward pass costs twice the forward):

  matmuls    6 x (parameters) x (tokens each parameter multiplies)
  attention  3 x 4·N·H per (query, key) pair: the score matmul q·k and the
             weighted sum of values, 2 FLOPs per multiply-add each.

How a causal mask counts is `train.mfu_attention`:

  full    all T x T pairs, as PaLM (Chowdhery et al. 2022, appendix B:
          6N + 12·L·H·Q·T per token) and nanoGPT count them; the default, so
          pretrax's MFU is comparable with the paper it cites
  causal  half of them, the pairs a causal kernel computes (Megatron, NeMo,
          MaxText since its PR #1988); lower FLOPs, so a lower MFU
          for the same speed

A bidirectional mask (encoder, cross-attention) counts in full either way.

Lookup tables (the input embedding when untied, learned positions, the T5
relative position buckets) take no matmul and count 0; a tied embedding is
the output layer's matmul and counts once. Norm scales and biases count as
matmul parameters (the 6N convention; they are a rounding error).

Encoder-decoder: every row has S = inputs_len encoder and T = targets_len
decoder tokens. Encoder weights see S tokens per row, decoder weights T,
except the cross-attention key and value projections, which project the
encoder's output and so see S. Per-token figures divide by the decoder
(target) tokens, the tokens a step trains on, as the training logs count them.
Which tokens each parameter sees is its row's FLOPs side in the parameter-group
table (models/param_groups.py).
Encoder self-attention is bidirectional (S^2 pairs), decoder self-attention
causal (T^2, or T^2 / 2 under `causal`), cross-attention full (T·S).
A decoder-only model is counted causal for every objective (a prefix-LM's
bidirectional prefix is not counted extra).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from pretrax.config import Config, ModelSection
from pretrax.models import build_model
from pretrax.models.family import family_of
from pretrax.models.moe import expert_share
from pretrax.models.param_groups import param_table
from pretrax.sizes import resolve_sizes

# train.mfu_attention: how the text names it, wherever FLOPs or MFU are shown
ATTENTION_CONVENTIONS = {
    "full": "attention counted in full, as PaLM",
    "causal": "causal attention counted as half",
}
CAUSAL_SHARE = {"full": 1.0, "causal": 0.5}  # share of the T x T pairs a causal mask counts


def attention_note(convention: str) -> str:
    """The words for a FLOPs or MFU figure: which attention convention it counts."""
    return ATTENTION_CONVENTIONS[convention]


def matmul_params(total_params: int, cfg: ModelSection, vocab_size: int, max_seq_len: int) -> int:
    """Decoder-only: parameters that take part in a matmul per token: all but lookup-only tables.

    The input embedding is a lookup; with tied embeddings the same table is
    also the output matmul, so it counts once. A learned position table is
    lookup-only.
    """
    lookups = max_seq_len * cfg.d_model if cfg.positions == "learned" else 0
    if not cfg.tie_embeddings:
        lookups += vocab_size * cfg.d_model
    return total_params - lookups


def flops_per_token(total_params: int, cfg: ModelSection, vocab_size: int, seq_len: int, max_seq_len: int,
                    attention: str = "full") -> float:
    """Decoder-only training FLOPs per token: 6N + 12·L·N·H·T (PaLM), or 6N + 6·L·N·H·T with `causal`."""
    n = matmul_params(total_params, cfg, vocab_size, max_seq_len)
    return 6.0 * n + 12.0 * CAUSAL_SHARE[attention] * cfg.n_layers * cfg.n_heads * cfg.head_size * seq_len


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Training FLOPs (forward + backward) of one optimizer step over the global batch."""

    matmul: float  # 6 x parameters x the tokens each multiplies
    attention: float  # scores and weighted values, causal masks counted as `convention` says
    tokens: int  # tokens trained on per step: B·T (the encoder-decoder's decoder tokens; its inputs are extra)
    convention: str = "full"  # train.mfu_attention: full or causal

    @property
    def total(self) -> float:
        return self.matmul + self.attention

    @property
    def per_token(self) -> float:
        return self.total / self.tokens

    @property
    def note(self) -> str:
        return attention_note(self.convention)


def step_flops(cfg: Config, vocab_size: int, abstract_params: Any = None, attention: str | None = None) -> StepFlops:
    """Model FLOPs of one training step, for either model kind.

    abstract_params: the model's nnx.Param state (shapes suffice); built with
    nnx.eval_shape when not given, which allocates nothing.
    attention: full or causal; None: cfg.train.mfu_attention.
    """
    convention = attention or cfg.train.mfu_attention
    causal = CAUSAL_SHARE[convention]
    if abstract_params is None:
        abstract_params = nnx.state(nnx.eval_shape(lambda: build_model(cfg, vocab_size, 0)), nnx.Param)
    m, B = cfg.model, cfg.train.batch_size
    sizes = resolve_sizes(cfg, vocab_size)  # vocab_size is the model's already: resolving it again keeps it
    groups = param_table(nnx.get_partition_spec(abstract_params), abstract_params, tie_embeddings=m.tie_embeddings,
                         expert_share=expert_share(m))
    pair = 12.0 * m.n_heads * sizes.head_dim  # training FLOPs per (query, key) pair per layer
    S, T = sizes.inputs_len, sizes.row_tokens  # S is 0 for a decoder-only model
    matmul, attention = family_of(m).step_flops(groups, m, B, S, T, pair, causal)
    return StepFlops(matmul, attention, B * T, convention)

"""Parameter and FLOP accounting (PaLM appendix B), shared by info, logs and benchmarks."""

from __future__ import annotations

from pretrax.config import ModelSection


def matmul_params(total_params: int, cfg: ModelSection, vocab_size: int, max_seq_len: int) -> int:
    """Parameters that take part in a matmul per token: all but lookup-only tables.

    The input embedding is a lookup; with tied embeddings the same table is
    also the output matmul, so it counts once. A learned position table is
    lookup-only.
    """
    lookups = max_seq_len * cfg.d_model if cfg.positions == "learned" else 0
    if not cfg.tie_embeddings:
        lookups += vocab_size * cfg.d_model
    return total_params - lookups


def flops_per_token(total_params: int, cfg: ModelSection, vocab_size: int, seq_len: int, max_seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls + 12·L·H·Q·T for attention (no causal discount)."""
    n = matmul_params(total_params, cfg, vocab_size, max_seq_len)
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_size * seq_len
    return 6.0 * n + attention

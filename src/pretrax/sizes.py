"""Every size a run derives from its config, resolved in one place.

Config fields leave sizes open (0 = "the usual one": model.max_seq_len, data.inputs_len,
data.targets_len, model.n_encoder_layers, model.head_dim, model.n_kv_heads, model.vocab_size);
`resolve_sizes` closes them all, so no other module writes `x or seq_len` again. It needs
no devices and allocates nothing; `plan.make_plan` adds the mesh, the state's layout and
the FLOPs on top.
"""

from __future__ import annotations

import dataclasses

from pretrax.config import Config, DataSection

VOCAB_MULTIPLE = 128  # a tokenizer's vocabulary is padded to this for fast matmuls


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The resolved sizes of one config (encoder fields are 0 for a decoder-only model)."""

    kind: str
    vocab_size: int  # the embedding table: model.vocab_size, or the tokenizer's padded to VOCAB_MULTIPLE
    window: int  # positions a decoder reads: model.max_seq_len, or data.seq_len
    row_tokens: int  # tokens a batch row trains on: seq_len, or the encoder-decoder's targets_len
    inputs_len: int  # encoder tokens per row (encoder_decoder)
    head_dim: int
    kv_heads: int
    encoder_layers: int  # encoder_decoder: model.n_encoder_layers, or n_layers
    decoder_layers: int
    batch_size: int
    grad_accum: int

    @property
    def micro_batch(self) -> int:
        """Sequences per micro-batch (all devices)."""
        return self.batch_size // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.row_tokens

    def row(self) -> str:
        """What one batch row is, for start-up lines: '32 x 128', or the encoder-decoder's two lengths."""
        text = f"{self.batch_size} x {self.row_tokens}"
        if self.inputs_len:  # rows come in (encoder, decoder) pairs
            text += f" decoder tokens, {self.inputs_len} encoder tokens per row"
        return text


def encoder_decoder_lengths(data: DataSection) -> tuple[int, int]:
    """(inputs_len, targets_len) of an encoder-decoder row: 0 means data.seq_len."""
    return data.inputs_len or data.seq_len, data.targets_len or data.seq_len


def window(cfg: Config) -> int:
    """The learned position table's size (and the longest sequence a decoder reads): model.max_seq_len,
    or data.seq_len when 0."""
    return cfg.model.max_seq_len or cfg.data.seq_len


def model_vocab_size(cfg: Config, tokenizer_vocab: int) -> int:
    """The embedding table's size: model.vocab_size, or the tokenizer's rounded up to VOCAB_MULTIPLE."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    return -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def resolve_sizes(cfg: Config, tokenizer_vocab: int) -> Sizes:
    """cfg's sizes, given its tokenizer's vocabulary size. The one place outside models/ that reads model.kind:
    models/family.py's families build on these sizes, so they cannot be asked here."""
    m, enc_dec = cfg.model, cfg.model.kind == "encoder_decoder"
    inputs_len, targets_len = encoder_decoder_lengths(cfg.data) if enc_dec else (0, cfg.data.seq_len)
    return Sizes(
        kind=m.kind,
        vocab_size=model_vocab_size(cfg, tokenizer_vocab),
        window=window(cfg),
        row_tokens=targets_len,
        inputs_len=inputs_len,
        head_dim=m.head_size,
        kv_heads=m.kv_heads,
        encoder_layers=(m.n_encoder_layers or m.n_layers) if enc_dec else 0,
        decoder_layers=m.n_layers,
        batch_size=cfg.train.batch_size,
        grad_accum=cfg.train.grad_accum,
    )

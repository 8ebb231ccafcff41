"""Tokenizers: text <-> token ids. Only the byte-level tokenizer for now.

Every tokenizer shares one id layout for its special tokens, so objectives
(UL2 mode tokens, span-corruption sentinels) and the trainer never need to know
which tokenizer produced the ids.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from pretrax.errors import ConfigError

MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")  # UL2 paradigm prefixes, in this order


class ByteTokenizer:
    """UTF-8 bytes as tokens: no training, no files, every string round-trips.

    Id layout (vocab_size = 262 + num_sentinels, 362 by default)::

        0                 pad
        1                 eos   (appended to every document by the pipeline)
        2                 bos   (reserved; the pipeline does not add it)
        3 .. 258          the 256 byte values: id = byte + 3
        259, 260, 261     mode tokens "[NLU]", "[NLG]", "[S2S]"
        262 .. V-1        sentinels, counting DOWN from the top:
                          sentinel_id(0) == V-1, sentinel_id(k) == V-1-k

    Sentinels count down (as in T5) so adding more sentinels never moves an id
    that an objective already uses for something else.
    """

    pad_id = 0
    eos_id = 1
    bos_id = 2
    byte_offset = 3

    def __init__(self, num_sentinels: int = 100):
        if num_sentinels < 0:
            raise ConfigError(f"num_sentinels must be >= 0, got {num_sentinels}")
        self.num_sentinels = num_sentinels
        self._first_mode = self.byte_offset + 256
        self.vocab_size = self._first_mode + len(MODE_TOKENS) + num_sentinels
        token_bytes = np.zeros(self.vocab_size, np.int32)
        token_bytes[self.byte_offset : self.byte_offset + 256] = 1
        token_bytes.flags.writeable = False
        # bytes each id stands for; specials stand for none (bits-per-byte divides by the sum)
        self.token_bytes = token_bytes

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes shifted past the special ids; no eos (the pipeline adds it)."""
        return (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.byte_offset).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; special and out-of-range ids (a padded model vocab) are skipped."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64).reshape(-1)
        ids = ids[(ids >= self.byte_offset) & (ids < self.byte_offset + 256)]
        return (ids - self.byte_offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def sentinel_id(self, k: int) -> int:
        if not 0 <= k < self.num_sentinels:
            raise ValueError(f"sentinel index must be in [0, {self.num_sentinels}), got {k}")
        return self.vocab_size - 1 - k

    def mode_token_id(self, name: str) -> int:
        if name not in MODE_TOKENS:
            raise ValueError(f"unknown mode token {name!r}; valid: {', '.join(MODE_TOKENS)}")
        return self._first_mode + MODE_TOKENS.index(name)


_TOKENIZERS = {"bytes": ByteTokenizer}


def load_tokenizer(name: str) -> ByteTokenizer:
    """The tokenizer named by data.tokenizer."""
    if name not in _TOKENIZERS:
        raise ConfigError(f"unknown data.tokenizer {name!r}; valid choices: {', '.join(sorted(_TOKENIZERS))}")
    return _TOKENIZERS[name]()

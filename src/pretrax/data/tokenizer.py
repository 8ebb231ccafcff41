"""Tokenizers: text <-> token ids. Byte-level, or SentencePiece.

Every tokenizer shares one id layout for its special tokens, so objectives
(UL2 mode tokens, span-corruption sentinels) and the trainer never need to know
which tokenizer produced the ids. All of them offer the same interface:
``vocab_size``, ``pad_id``, ``eos_id``, ``bos_id``, ``encode(text)``,
``decode(ids)``, ``token_bytes``, ``sentinel_id(k)``, ``mode_token_id(name)``.

``data.tokenizer`` names one: ``bytes`` (:class:`ByteTokenizer`), the path
of any SentencePiece ``.model`` file (:class:`SentencePieceTokenizer`), or
``none`` (:class:`IdsTokenizer`: token ids only, for a checkpoint imported
without a tokenizer pretrax can use; ``pretrax import``, docs/interop.md).

SentencePiece id layout
-----------------------
The ``.model`` file holds the base pieces; the tokenizer always adds
``NUM_SENTINELS`` (100) sentinels *above* them, as T5 does (its 32000-piece
model + 100 extra ids = 32100), so ``vocab_size == sp.get_piece_size() + 100``.
For a model trained by ``pretrax tokenizer train`` (see spm_train.py)::

    0                 pad   "<pad>"
    1                 eos   "</s>"
    2                 bos   "<s>"
    3                 unk   "<unk>"  (never produced: byte fallback covers every input)
    4, 5, 6           mode tokens "[NLU]", "[NLG]", "[S2S]" (user-defined pieces)
    7 .. 262          the 256 byte-fallback pieces "<0x00>" .. "<0xFF>"
    263 .. P-1        learned pieces (P = vocab_size - 100 = sp.get_piece_size())
    P .. V-1          sentinels "<extra_id_k>", counting DOWN from the top:
                      sentinel_id(0) == V-1, sentinel_id(k) == V-1-k

For an external model (e.g. T5's ``spiece.model``) the sentinels are the same
top 100 ids; pad/eos/bos are the model's own ids. A model without a pad id
uses its unk id as pad (pad is only filler, never a training target); one
without a bos id uses its pad id as bos (T5 starts its decoder with pad); one
without an eos id is refused. ``mode_token_id`` finds ``[NLU]`` etc. only if
the model has them as pieces, else raises ConfigError.

Decoding: base ids go through SentencePiece (control pieces pad/eos/bos decode
to nothing), a sentinel id decodes to its text ``<extra_id_k>`` (so printed
span-corruption examples stay readable), ids at or past ``vocab_size`` (a
padded model vocabulary) are skipped. Encoding never produces a sentinel: the
text ``<extra_id_0>`` encodes as ordinary pieces. Mode tokens are real pieces,
so the text ``[NLU]`` encodes to the mode token (as UL2 prepends them as text)
and decodes back to it; their ``token_bytes`` is therefore their length, 5.
SentencePiece writes spaces as U+2581 inside pieces; a literal U+2581 in the
text is encoded as its three byte-fallback pieces, so it survives the round
trip. (An external model without byte fallback, or with a normalizer or dummy
prefix, as T5's has, does not round-trip every text exactly.)
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Iterable, Protocol

import numpy as np

from pretrax.errors import ConfigError

MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")  # UL2 paradigm prefixes, in this order
NUM_SENTINELS = 100  # sentinels SentencePieceTokenizer adds above the model's pieces
SENTINEL_TEXT = "<extra_id_{}>"
_META = "\u2581"  # SentencePiece's whitespace marker


class Tokenizer(Protocol):
    """What the pipeline, objectives and trainer use from a tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int
    token_bytes: np.ndarray  # int32 [vocab_size]: UTF-8 bytes each id stands for, 0 for specials
    fingerprint: str  # a stable name for the ids encode() gives: "bytes", or a hash of the .model file's bytes

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def sentinel_id(self, k: int) -> int: ...

    def mode_token_id(self, name: str) -> int: ...


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

    @property
    def fingerprint(self) -> str:
        """Names what ``encode`` produces (stored with pre-tokenized data): sentinels never appear in it."""
        return "bytes"

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes shifted past the special ids; no eos (the pipeline adds it)."""
        return (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.byte_offset).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; special and out-of-range ids (a padded model vocab) are skipped."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64).reshape(-1)
        ids = ids[(ids >= self.byte_offset) & (ids < self.byte_offset + 256)]
        return (ids - self.byte_offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def sentinel_id(self, k: int) -> int:
        return _sentinel_id(self, k)

    def mode_token_id(self, name: str) -> int:
        _check_mode_token(name)
        return self._first_mode + MODE_TOKENS.index(name)


def _sentinel_id(tokenizer, k: int) -> int:
    """Sentinel k counts down from the top of the vocabulary (T5's <extra_id_k>), for every tokenizer."""
    if not 0 <= k < tokenizer.num_sentinels:
        raise ValueError(f"sentinel index must be in [0, {tokenizer.num_sentinels}), got {k}")
    return tokenizer.vocab_size - 1 - k


def _check_mode_token(name: str) -> None:
    if name not in MODE_TOKENS:
        raise ConfigError(f"unknown mode token {name!r}; valid: {', '.join(MODE_TOKENS)} (or R, S, X)")


def _flat_ids(ids: Iterable[int]) -> list[int]:
    return np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), np.int64).reshape(-1).tolist()


class SentencePieceTokenizer:
    """A SentencePiece model plus ``num_sentinels`` sentinel ids above its pieces (layout: module docstring).

    Built from the model's serialized bytes; ``source`` (a path) only names it
    in messages. Pickles as those bytes, so grain worker processes can use it.
    """

    def __init__(self, model_proto: bytes, *, source: str = "<model bytes>", num_sentinels: int = NUM_SENTINELS):
        import sentencepiece as spm

        if num_sentinels < 0:
            raise ConfigError(f"num_sentinels must be >= 0, got {num_sentinels}")
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError (or worse) on bad bytes
            detail = " ".join(str(e).split())
            raise ConfigError(
                f"data.tokenizer {source!r} is not a SentencePiece model ({detail}); "
                "valid: 'bytes' or the path of a SentencePiece .model file") from None
        self._proto = bytes(model_proto)
        self.source = source
        self.num_sentinels = num_sentinels
        self.sp = sp
        self.base_vocab_size = n = sp.get_piece_size()
        self.vocab_size = n + num_sentinels
        self.unk_id = sp.unk_id()
        if sp.eos_id() < 0:
            raise ConfigError(f"SentencePiece model {source!r} has no eos id; pretrax ends every document with eos")
        self.eos_id = sp.eos_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.unk_id  # documented fallbacks
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else self.pad_id
        token_bytes = np.zeros(self.vocab_size, np.int32)
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            if sp.is_byte(i):
                token_bytes[i] = 1
            else:
                token_bytes[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        token_bytes.flags.writeable = False
        self.token_bytes = token_bytes  # sentinels (and specials) stand for no bytes
        # SentencePiece writes spaces as U+2581 inside pieces, so a literal U+2581 in the text would decode
        # as a space; with byte fallback it is encoded as its three UTF-8 byte pieces instead.
        meta_bytes = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")]
        self._meta_ids = meta_bytes if all(sp.is_byte(i) for i in meta_bytes) else None

    @classmethod
    def from_file(cls, path: str, *, num_sentinels: int = NUM_SENTINELS) -> "SentencePieceTokenizer":
        if not os.path.isfile(path):
            raise ConfigError(f"data.tokenizer {path!r} is neither 'bytes' nor an existing SentencePiece .model file")
        try:
            with open(path, "rb") as f:
                proto = f.read()
        except OSError as e:
            raise ConfigError(f"data.tokenizer {path!r} cannot be read ({e.strerror}); "
                              "valid: 'bytes' or the path of a SentencePiece .model file") from None
        return cls(proto, source=path, num_sentinels=num_sentinels)

    def __getstate__(self):
        return {"model_proto": self._proto, "source": self.source, "num_sentinels": self.num_sentinels}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], source=state["source"], num_sentinels=state["num_sentinels"])

    @property
    def fingerprint(self) -> str:
        """Names what ``encode`` produces (stored with pre-tokenized data): a hash of the model's bytes."""
        return "sentencepiece:sha256:" + hashlib.sha256(self._proto).hexdigest()

    def encode(self, text: str) -> list[int]:
        """SentencePiece ids; no bos/eos (the pipeline adds them), never a sentinel."""
        if self._meta_ids is None or _META not in text:
            return self.sp.encode(text, out_type=int)
        ids: list[int] = []
        for k, part in enumerate(text.split(_META)):
            if k:
                ids.extend(self._meta_ids)
            if part:
                ids.extend(self.sp.encode(part, out_type=int))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids; sentinels become ``<extra_id_k>``, ids >= vocab_size are skipped."""
        n, parts, run = self.base_vocab_size, [], []
        for i in _flat_ids(ids):
            if 0 <= i < n:
                run.append(i)
            elif n <= i < self.vocab_size:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(SENTINEL_TEXT.format(self.vocab_size - 1 - i))
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)

    def sentinel_id(self, k: int) -> int:
        return _sentinel_id(self, k)

    def mode_token_id(self, name: str) -> int:
        _check_mode_token(name)
        i = self.sp.piece_to_id(name)
        if i == self.unk_id and self.sp.id_to_piece(i) != name:
            raise ConfigError(
                f"SentencePiece model {self.source!r} has no piece {name!r} for the UL2 mode tokens; "
                "use a model trained by `pretrax tokenizer train`, or an objective without mode tokens")
        return i


@functools.lru_cache(maxsize=8)
def _load_spm(path: str, mtime_ns: int, size: int) -> SentencePieceTokenizer:
    del mtime_ns, size  # cache keys: a rewritten file is loaded again
    return SentencePieceTokenizer.from_file(path)


class IdsTokenizer:
    """No tokenizer (data.tokenizer: none): the run takes token ids, never text.

    An imported checkpoint whose own tokenizer pretrax cannot use keeps its weights
    usable: "text" is ids written as numbers (``encode("5,17,9") == [5, 17, 9]``,
    ``decode`` writes them back the same way), so sampling and scoring work on ids
    and training on text is refused with one line. vocab_size 0: the model's
    vocabulary (model.vocab_size) is the only size. The special ids are pretrax's
    own layout (pad 0, eos 1, bos 2) unless given.
    """

    fingerprint = "ids"
    num_sentinels = 0
    token_bytes = np.zeros(0, np.int32)
    ids_only = True

    def __init__(self, *, pad_id: int = 0, eos_id: int = 1, bos_id: int = 2, vocab_size: int = 0):
        self.pad_id, self.eos_id, self.bos_id, self.vocab_size = pad_id, eos_id, bos_id, vocab_size

    def encode(self, text: str) -> list[int]:
        try:
            return [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"data.tokenizer is none: this run takes token ids such as 5,17,9, not text "
                              f"({text[:40]!r}); set data.tokenizer to 'bytes' or a SentencePiece .model "
                              "to read text") from None

    def decode(self, ids: Iterable[int]) -> str:
        return ",".join(str(i) for i in _flat_ids(ids))

    def sentinel_id(self, k: int) -> int:
        raise ConfigError("data.tokenizer is none: it has no sentinels for span corruption; set data.tokenizer "
                          "to 'bytes' or a SentencePiece .model")

    def mode_token_id(self, name: str) -> int:
        raise ConfigError(f"data.tokenizer is none: it has no mode token {name!r}; set data.tokenizer to "
                          "'bytes' or a SentencePiece .model trained by `pretrax tokenizer train`")


_TOKENIZERS = {"bytes": ByteTokenizer, "none": IdsTokenizer}


def config_tokenizer(data) -> ByteTokenizer | SentencePieceTokenizer | IdsTokenizer:
    """A config's tokenizer: data.tokenizer with data.num_sentinels sentinels at the top of its ids.

    Everything of one run (the model's vocabulary, the objective, held-out bits per byte,
    decoding a sample) must see the same ids, so every command loads it through here.
    """
    return with_sentinels(load_tokenizer(data.tokenizer), data.num_sentinels)


def load_tokenizer(name: str) -> ByteTokenizer | SentencePieceTokenizer | IdsTokenizer:
    """The tokenizer named by data.tokenizer: 'bytes', 'none' (ids only), or the path of a SentencePiece .model."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]()
    from pretrax import storage

    if storage.is_remote(name):  # gs://.../tok.model: SentencePiece loads bytes, read once into a local mirror
        storage.check_url(name, "data.tokenizer")
        if not storage.isfile(name):
            raise ConfigError(f"unknown data.tokenizer {name!r}: no such object; valid: 'bytes' or the path "
                              "(local or gs://) of a SentencePiece .model file")
        name = storage.local_file(name)
    try:
        st = os.stat(name)
    except (OSError, ValueError):
        st = None
    if st is None or not os.path.isfile(name):
        raise ConfigError(f"unknown data.tokenizer {name!r}: not 'bytes' and not an existing file; "
                          "valid: 'bytes' or the path of a SentencePiece .model file")
    return _load_spm(os.path.abspath(name), st.st_mtime_ns, st.st_size)


def with_sentinels(tokenizer, n: int):
    """The tokenizer with ``n`` sentinels (data.num_sentinels) above its ordinary ids: seqio's ``extra_ids``.

    Sentinel k is then id B + n - 1 - k (B ordinary ids), counting down from the top as T5's
    ``<extra_id_k>``; the default 100 keeps the tokenizer's own ids.
    """
    if getattr(tokenizer, "num_sentinels", None) == n or isinstance(tokenizer, IdsTokenizer):
        return tokenizer  # ids only: sentinels are whatever ids the caller gives
    if isinstance(tokenizer, ByteTokenizer):
        return ByteTokenizer(n)
    if isinstance(tokenizer, SentencePieceTokenizer):
        state = tokenizer.__getstate__()
        return SentencePieceTokenizer(state["model_proto"], source=state["source"], num_sentinels=n)
    raise ConfigError(f"data.num_sentinels={n}: the tokenizer {type(tokenizer).__name__} has a fixed "
                      f"{getattr(tokenizer, 'num_sentinels', 'unknown number of')} sentinels")

"""Train a SentencePiece model with pretrax's special tokens (``pretrax tokenizer train``).

The model gets ``vocab_size - 100`` pieces; :class:`~pretrax.data.tokenizer.SentencePieceTokenizer`
adds the 100 sentinels above them, so the tokenizer's ``vocab_size`` is the
``vocab_size`` asked for here. Id layout (also in tokenizer.py)::

    0 pad, 1 eos, 2 bos, 3 unk,
    4 "[NLU]", 5 "[NLG]", 6 "[S2S]"            (user-defined pieces: UL2 mode tokens)
    7 .. 262     byte-fallback pieces <0x00> .. <0xFF>
    263 .. V-101 learned pieces
    V-100 .. V-1 sentinels <extra_id_99> .. <extra_id_0>  (sentinel_id(k) == V-1-k)

Options chosen so that decode(encode(text)) == text for any Unicode text:
byte fallback (no input is ever unknown), identity normalization, no dummy
prefix, whitespace kept as is (whitespace-only pieces allowed, which also gives
indentation pieces for code), digits split one per piece.

Training text: each document is split into lines (newlines themselves are never
inside a piece; they encode as the byte piece <0x0A>); blank lines are dropped
and lines longer than ``max_sentence_length`` bytes are cut into chunks. At most
``max_sentences`` lines are kept, drawn by reservoir sampling with a fixed
``seed`` and fed in corpus order with SentencePiece's own shuffling off, so the
same inputs and options give the same model. (BPE training is fully
deterministic; unigram's EM runs on ``num_threads`` threads and is
deterministic in practice.) Unigram training uses a smaller seed-piece set and
one EM sub-iteration per pruning round, which keeps it to seconds on the stdlib
corpus; ``trainer_options`` overrides any SentencePiece trainer option.

Writing is atomic: the model and its .vocab are trained in memory, written to
temporary files next to ``out``, then renamed over it; a failure leaves an
existing ``out`` untouched. The .vocab lists every id of the tokenizer in id
order (``piece<TAB>score``), the 100 sentinels included as the last lines.
"""

from __future__ import annotations

import glob
import io
import os
import random
import secrets
from typing import Iterable, Iterator

from pretrax.data.tokenizer import MODE_TOKENS, NUM_SENTINELS, SENTINEL_TEXT, SentencePieceTokenizer
from pretrax.errors import ConfigError, DataError

MODEL_TYPES = ("bpe", "unigram")
SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
FIRST_MODE_ID = 4
MIN_VOCAB_SIZE = NUM_SENTINELS + 256 + 8  # sentinels + byte pieces + 4 specials + 3 mode tokens + 1 learned piece


def _resolve_inputs(inputs: Iterable[str]) -> list[str]:
    """'stdlib' kept as is; every other input expanded (glob, ~) into sorted regular files."""
    sources: list[str] = []
    for spec in inputs:
        if spec == "stdlib":
            sources.append(spec)
            continue
        pattern = os.path.expanduser(spec)
        if os.path.isdir(pattern):
            raise DataError(f"tokenizer input {spec!r} is a directory; pass files or a glob such as '{spec}/**/*.txt'")
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise DataError(f"tokenizer input {spec!r} matches no files; give text files, globs, or 'stdlib'")
        sources.extend(matches)
    if not sources:
        raise DataError("no tokenizer inputs given; give text files, globs, or 'stdlib'")
    return sources


def _documents(sources: list[str]) -> Iterator[str]:
    for source in sources:
        if source == "stdlib":
            from pretrax.data.corpus import stdlib_corpus

            yield from stdlib_corpus()
            continue
        try:
            with open(source, "rb") as f:
                yield f.read().decode("utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"cannot read tokenizer input {source!r}: {e.strerror}") from None


def _lines(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), max_chars):
                yield line[start : start + max_chars]


def sample_lines(docs: Iterable[str], *, max_sentences: int, max_sentence_length: int, seed: int) -> list[str]:
    """At most max_sentences non-blank lines, a uniform sample (fixed seed), in input order."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    max_chars = max(1, max_sentence_length // 4)  # a character is at most 4 UTF-8 bytes
    for i, line in enumerate(_lines(docs, max_chars)):
        if i < max_sentences:
            reservoir.append((i, line))
        else:
            j = rng.randrange(i + 1)
            if j < max_sentences:
                reservoir[j] = (i, line)
    reservoir.sort()
    return [line for _, line in reservoir]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _write_temp(path: str, data: bytes) -> str:
    """Write data (synced) to a new temp file next to path and return its name; the caller renames it."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # mode from the umask, like any other file the user writes
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def train_sentencepiece(
    inputs: list[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    out: str,
    max_sentences: int = 100_000,
    max_sentence_length: int = 8192,
    seed: int = 0,
    num_threads: int | None = None,
    trainer_options: dict | None = None,
    verbose: bool = False,
) -> str:
    """Train OUT (a .model, plus its .vocab) from text files / globs / 'stdlib'; returns OUT.

    vocab_size counts every id of the resulting tokenizer, the 100 sentinels
    included (layout: module docstring).
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ConfigError(f"unknown --model-type {model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"--vocab-size {vocab_size} is too small: it must be at least {MIN_VOCAB_SIZE} "
            f"({NUM_SENTINELS} sentinels + 256 byte pieces + 7 special and mode tokens + 1 learned piece)")
    if not out.endswith(".model"):
        raise ConfigError(f"--out {out!r} must end in .model (the .vocab is written next to it)")
    if max_sentences < 1 or max_sentence_length < 16:
        raise ConfigError("max_sentences must be >= 1 and max_sentence_length >= 16")
    out_dir = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(f"--out {out!r} is a directory; give PATH.model")

    sources = _resolve_inputs(inputs)  # before any work: a bad glob fails at once
    lines = sample_lines(_documents(sources), max_sentences=max_sentences,
                         max_sentence_length=max_sentence_length, seed=seed)
    if not lines:
        raise DataError(f"tokenizer inputs {' '.join(inputs)!r} contain no text")

    pieces = vocab_size - NUM_SENTINELS
    options = dict(
        vocab_size=pieces,
        model_type=model_type,
        pad_id=SPECIAL_IDS["pad"], eos_id=SPECIAL_IDS["eos"], bos_id=SPECIAL_IDS["bos"], unk_id=SPECIAL_IDS["unk"],
        user_defined_symbols=list(MODE_TOKENS),
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,  # the rarest characters get no piece of their own: they fall back to bytes
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=max_sentence_length,
        input_sentence_size=0,  # already sampled above
        shuffle_input_sentence=False,
        num_threads=num_threads or max(1, min(16, os.cpu_count() or 1)),
        minloglevel=0 if verbose else 2,
    )
    if model_type == "unigram":
        options.update(seed_sentencepiece_size=min(1_000_000, max(50_000, 20 * pieces)), num_sub_iterations=1)
    options.update(trainer_options or {})

    buf = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, **options)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError with a multi-line status
        raise DataError(f"SentencePiece training for {out!r} failed (nothing written): {_one_line(e)}") from None
    proto = buf.getvalue()

    tok = SentencePieceTokenizer(proto, source=out)
    if tok.vocab_size != vocab_size:  # hard_vocab_limit makes SentencePiece fail first; kept as a guard
        raise DataError(f"SentencePiece made {tok.base_vocab_size} pieces for {out!r}, not {pieces}; nothing written")
    ids = (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, *(tok.mode_token_id(m) for m in MODE_TOKENS))
    assert ids == (0, 1, 2, 3, *range(FIRST_MODE_ID, FIRST_MODE_ID + len(MODE_TOKENS))), ids

    vocab_lines = [f"{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i):g}" for i in range(tok.base_vocab_size)]
    vocab_lines += [f"{SENTINEL_TEXT.format(k)}\t0" for k in reversed(range(NUM_SENTINELS))]
    vocab_path = out[: -len(".model")] + ".vocab"

    os.makedirs(out_dir, exist_ok=True)
    tmps: list[str] = []
    try:
        tmps.append(_write_temp(vocab_path, ("\n".join(vocab_lines) + "\n").encode("utf-8")))
        tmps.append(_write_temp(out, proto))
        os.replace(tmps[0], vocab_path)
        os.replace(tmps[1], out)
    except OSError as e:
        for t in tmps:
            _remove(t)
        raise DataError(f"cannot write {out!r}: {e.strerror or _one_line(e)}") from None
    return out

"""Memory stays bounded for long documents: a text document is indexed and read in pieces (issue 20, item 6).

benchmarks/long_document_memory.py measures a whole training run on a 200 MB single line
(docs/reliability.md has the figures); these tests prove the mechanism quickly.
"""

import tracemalloc

import pytest

from pretrax.data.corpus import split
from pretrax.data.file_source import PIECE_BYTES, FileCorpus


def _scan(path, text_split="file"):
    return FileCorpus.scan([str(path)], [False], text_split=text_split)


@pytest.mark.parametrize("text_split", ["file", "blank_lines"])
def test_a_long_single_line_is_read_in_pieces_that_rebuild_it_and_share_its_name(tmp_path, text_split):
    words = " ".join(f"w{i}" for i in range(1_200_000))  # about 8 MB on one line, no newline inside
    path = tmp_path / "huge.txt"
    path.write_text("intro block\n\n" + words + "\n" if text_split == "blank_lines" else words)
    corpus = _scan(path, text_split)
    pieces = [i for i in range(len(corpus)) if corpus.name(i) == corpus.name(len(corpus) - 1)]
    fewest = -(-len(words) // PIECE_BYTES)  # each cut moves back to a space: at most one piece more
    assert fewest <= len(pieces) <= fewest + 1
    texts = [corpus[i] for i in pieces]
    assert "".join(texts) == words  # nothing lost or repeated at a cut
    assert all(len(t.encode()) <= PIECE_BYTES for t in texts)
    assert all(t.endswith(" ") for t in texts[:-1])  # cut after a space, never inside a word
    # all pieces of the document fall on the same side of the held-out split
    train, heldout = split(corpus, 50.0)
    assert {corpus.name(i) for i in pieces} & set(train.names) in (set(), {corpus.name(pieces[0])})
    assert len(train) + len(heldout) == len(corpus)


def test_cuts_without_whitespace_never_split_a_character(tmp_path):
    text = "é" * (3 * PIECE_BYTES // 2)  # two bytes each, no whitespace at all
    path = tmp_path / "accents.txt"
    path.write_text(text)
    corpus = _scan(path)
    assert len(corpus) == 3 and "".join(corpus[i] for i in range(3)) == text
    assert "\ufffd" not in "".join(corpus[i] for i in range(3))


def test_scanning_and_reading_a_long_document_hold_one_piece_at_a_time(tmp_path):
    """A 16 MB single line: the scan and each read allocate a few pieces' worth, never the document."""
    path = tmp_path / "huge.txt"
    with open(path, "w") as f:
        for _ in range(16):
            f.write("lorem ipsum dolor " * ((1 << 20) // 18 + 1))
    tracemalloc.start()
    try:
        corpus = _scan(path)
        for i in range(len(corpus)):
            corpus[i]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(corpus) >= 16 * (1 << 20) // PIECE_BYTES
    assert peak < 4 * (1 << 20), f"peak {peak / 2**20:.1f} MB while scanning and reading a 16 MB document"

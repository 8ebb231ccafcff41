"""No traceback from the CLI, ever: every subcommand, fed a file that is not UTF-8 text, a path it cannot
write, or a value that cannot train, answers one line and exit 2, and writes nothing (issue 20, item 4)."""

import os

import pytest

from pretrax import cli

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
SWEEP = os.path.join(ROOT, "configs", "sweeps", "tiny_widths.yaml")

# {bin}: random bytes, not UTF-8; {file}: a regular file, so {file}/x cannot be made; {text}: a small text file
CASES = [
    # files that are not UTF-8 text, for every subcommand that reads one
    (["train", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["info", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["bench", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["compile", "{bin}", "--topology", "v5e-8"], "config file '{bin}' is not UTF-8 text"),
    (["coordcheck", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["data", "inspect", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["data", "stats", "{bin}"], "config file '{bin}' is not UTF-8 text"),
    (["sweep", "{bin}"], "sweep file '{bin}' is not UTF-8 text"),
    (["scaling", "fit", "{bin}"], "results file '{bin}' is not UTF-8 text"),
    (["train", TINY_CONFIG, "data.tokenizer={bin}"], "is not a SentencePiece model"),
    (["generate", "{bin}"], "is a file, not a run dir"),
    (["checkpoints", "{bin}"], "is a file; give the run.dir of a training run"),
    # outputs under a file (a path that cannot be made), for every subcommand that writes
    (["train", TINY_CONFIG, "run.dir={file}/run"], "run.dir {file}/run cannot be written"),
    (["sweep", SWEEP, "--dir", "{file}/sweep"], "sweep dir '{file}/sweep' cannot be made: '{file}' is a file"),
    (["coordcheck", TINY_CONFIG, "--widths", "48,96", "--out", "{file}/cc"], "--out '{file}/cc' cannot be made"),
    (["coordcheck", TINY_CONFIG, "--widths", "48,96", "run.dir={file}/run"], "cannot be made: '{file}' is a file"),
    (["scaling", "fit", "{bin}", "--plot", "{file}/fit.png"], "--plot's directory '{file}' is a file"),
    (["tokenizer", "train", "{text}", "--vocab-size", "400", "--out", "{file}/x.model"], "--out's directory"),
    (["data", "prepare", "{text}", "--name", "x", "--data-dir", "{file}/tfds"], "--data-dir '{file}/tfds' cannot be made"),
    # values that pass a type check but cannot train, and usage errors
    (["info", TINY_CONFIG, "optim.lr=inf"], "optim.lr"),
    (["bench", TINY_CONFIG, "optim.b1=2"], "optim.b1"),
    (["train", TINY_CONFIG, "optim.weight_decay=nan"], "optim.weight_decay"),
    (["generate", "{file}", "--temperature", "nan"], "--temperature must be a finite number"),
    (["scaling", "fit", "{bin}", "--bootstrap", "many"], "invalid int value: 'many'"),
    (["trian", TINY_CONFIG], "invalid choice: 'trian'"),
]


def snapshot(root):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:3]).replace(ROOT, "") for a, _ in CASES])
def test_every_subcommand_answers_bad_input_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    names = {"bin": str(tmp_path / "bin.dat"), "file": str(tmp_path / "afile"), "text": str(tmp_path / "doc.txt")}
    (tmp_path / "bin.dat").write_bytes(bytes(range(128, 256)) * 8 + os.urandom(512))
    (tmp_path / "afile").write_text("keep me\n")
    (tmp_path / "doc.txt").write_text("def f(x):\n    return x\n" * 50)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) if argv[0] == "trian" or "--bootstrap" in argv else _nothing() as raised:
        code = cli.main([a.format(**names) for a in argv])
    if raised is not None:
        code = raised.value.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("pretrax:")]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("pretrax: error: ") and message.format(**names) in lines[0], lines[0]
    assert snapshot(tmp_path) == before


class _nothing:
    """A context that expects no exception (pytest.raises' counterpart), so both kinds share one test body."""

    value = None

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_a_bug_is_one_line_naming_a_file_that_holds_the_traceback(monkeypatch, capsys):
    """An exception pretrax did not foresee (a bug) is exit 1, one line, the traceback kept for the report."""
    import pretrax.info

    def broken(cfg):
        raise RuntimeError("something pretrax did not foresee")

    monkeypatch.setattr(pretrax.info, "describe", broken)
    monkeypatch.delenv("PRETRAX_TRACEBACK", raising=False)
    assert cli.main(["info", TINY_CONFIG]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("pretrax: internal error: RuntimeError: something pretrax did not foresee; the traceback is in ")
    path = line.split("the traceback is in ")[1].split(" ")[0]
    text = open(path).read()
    os.remove(path)
    assert "Traceback (most recent call last)" in text and "in broken" in text
    monkeypatch.setenv("PRETRAX_TRACEBACK", "1")  # for a developer: the exception itself
    with pytest.raises(RuntimeError, match="did not foresee"):
        cli.main(["info", TINY_CONFIG])

"""Peak memory of training on one huge single-line document vs a normal corpus (issue 20, item 6).

Writes a corpus of small files (the Python standard library's own modules) plus either one
ordinary 1 MB file or one single-line file of --mb megabytes, trains the tiny decoder on each
for a few steps in a fresh `pretrax train` process, and prints each process's peak resident
memory (ru_maxrss). The huge document must cost no more than the normal run, up to a margin:
text files are read in bounded pieces (data/file_source.py, PIECE_BYTES).

    python benchmarks/long_document_memory.py --mb 200
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time

from pretrax.data.corpus import is_heldout

HELDOUT_PERCENT = 10.0


def write_corpus(root: str) -> str:
    """40 stdlib modules as small documents; returns their glob."""
    small = os.path.join(root, "small")
    os.makedirs(small)
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py"))[:40]
    for n in names:
        with open(os.path.join(stdlib, n), "rb") as src, open(os.path.join(small, n + ".txt"), "wb") as dst:
            dst.write(src.read())
    return os.path.join(small, "*.txt")


def training_name(root: str, stem: str) -> str:
    """A file name the held-out hash puts in training (so the big document is trained on, not evaluated)."""
    for k in range(100):
        path = os.path.join(root, f"{stem}{k}.txt")
        if not is_heldout(path, HELDOUT_PERCENT):
            return path
    raise RuntimeError("no training name found")


def write_single_line(path: str, megabytes: float) -> None:
    """One line of stdlib text (newlines turned into spaces), repeated to the size asked for."""
    stdlib = sysconfig.get_paths()["stdlib"]
    with open(os.path.join(stdlib, "argparse.py"), "rb") as f:
        block = f.read().replace(b"\n", b" ")
    target = int(megabytes * 1e6)
    with open(path, "wb") as f:
        written = 0
        while written < target:
            piece = block[: target - written]
            f.write(piece)
            written += len(piece)
        f.write(b"\n")


def peak_rss_mb(args: list[str], env: dict) -> tuple[float, float]:
    """(peak resident MB of the command's process tree's largest process, wall seconds); fresh wrapper per run."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the single-line document")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
    with tempfile.TemporaryDirectory() as root:
        small = write_corpus(root)
        normal = training_name(root, "normal")
        write_single_line(normal, 1.0)
        huge = training_name(root, "huge")
        write_single_line(huge, args.mb)
        pretrax = os.path.join(os.path.dirname(sys.executable), "pretrax")
        common = [pretrax, "train", config, "data.source=text", f"data.heldout_percent={HELDOUT_PERCENT}",
                  f"train.steps={args.steps}", "train.eval_batches=2", "train.sample_tokens=0",
                  f"checkpoint.every={args.steps}"]
        results = {}
        for label, path in (("normal (40 modules + one 1 MB file)", normal),
                            (f"huge (40 modules + one {args.mb:g} MB single line)", huge)):
            run = [f"data.paths=[{small},{path}]", f"run.dir={os.path.join(root, 'run-' + label[:4])}"]
            results[label] = peak_rss_mb(common + run + ["--no-sample"], env)
        for label, (rss, wall) in results.items():
            print(f"{label}: peak RSS {rss:,.0f} MB, {wall:.0f} s wall")
        (n_rss, _), (h_rss, _) = results.values()
        print(f"huge / normal peak RSS: {h_rss / n_rss:.2f}")


if __name__ == "__main__":
    main()

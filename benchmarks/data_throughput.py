"""Input-pipeline throughput per host: tokens/s through read + tokenize + objective + packing + batching.

    python benchmarks/data_throughput.py [configs/tiny.yaml] [key=value ...] [--batches 200] [--workers 2]
        [--prepare-from stdlib | --tfds-name NAME --tfds-data-dir DIR]

One run measures, each with data.num_workers=0 and =N (--workers):

(a) on-the-fly: the configured source (stdlib text by default), tokenized as it is read;
(b) pre-tokenized ArrayRecord: a tfds dataset whose records hold the token ids of
    data.tokenizer. With ``--prepare-from stdlib`` (the default) it is built first,
    in a temporary data_dir, from the stdlib corpus's documents (the text of (a)) by
    ``pretrax data prepare --tokenizer <data.tokenizer>``; or name a prepared one
    with --tfds-name / --tfds-data-dir.

Tokens are counted from the batches (segment_ids > 0); the first batch (start-up:
first reads, worker processes starting) is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from pretrax import config as config_lib
from pretrax.data.pipeline import make_train_iterator

DATASET = "pretrax_bench_stdlib"


def measure(cfg, batches: int) -> float:
    iterator = make_train_iterator(cfg)
    try:
        next(iterator)  # start-up is not throughput
        t0 = time.perf_counter()
        tokens = 0
        for _ in range(batches):
            tokens += int((next(iterator)["segment_ids"] > 0).sum())
        return tokens / (time.perf_counter() - t0)
    finally:
        iterator.close()


def prepare_stdlib(data_dir: str, tokenizer: str) -> float:
    """Write the stdlib corpus as one JSON-lines file and prepare it with token ids; returns seconds taken."""
    import tensorflow_datasets as tfds

    from pretrax.data.corpus import stdlib_corpus
    from pretrax.data.tfds_prepare import prepare

    tfds.disable_progress_bar()
    t0 = time.perf_counter()
    corpus = stdlib_corpus()
    path = os.path.join(data_dir, "stdlib.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(corpus)):
            f.write(json.dumps({"text": corpus[i]}) + "\n")
    prepare([path], name=DATASET, data_dir=os.path.join(data_dir, "tfds"), eval_percent=0.0, tokenizer=tokenizer)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="N: the worker-process count measured besides 0")
    parser.add_argument("--prepare-from", choices=("stdlib",), default="stdlib",
                        help="(b): build a temporary pre-tokenized dataset from this corpus")
    parser.add_argument("--tfds-name", default=None, help="(b): a dataset prepared with --tokenizer instead")
    parser.add_argument("--tfds-data-dir", default="", help="(b): its data_dir")
    args = parser.parse_args()

    cfg = config_lib.load(args.config, args.overrides)
    sources = ", ".join(s.source if s.source != "tfds" else f"tfds:{s.tfds_name}" for s in cfg.data.sources)
    print(f"tokenizer: {cfg.data.tokenizer}; batch {cfg.train.batch_size} x {cfg.data.seq_len}; "
          f"objective {cfg.data.objective}; {args.batches} timed batches; {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="pretrax-bench-") as tmp:
        if args.tfds_name:
            name, data_dir = args.tfds_name, args.tfds_data_dir
        else:
            seconds = prepare_stdlib(tmp, cfg.data.tokenizer)
            name, data_dir = DATASET, os.path.join(tmp, "tfds")
            print(f"prepared {name} from {args.prepare_from} with tokens of {cfg.data.tokenizer} in {seconds:.1f} s")
        pretokenized = ["data.source=tfds", f"data.tfds_name={name}", f"data.data_dir={data_dir}"]
        runs = [(f"(a) on-the-fly text ({sources})", []), (f"(b) pre-tokenized ArrayRecord (tfds:{name})", pretokenized)]
        for label, extra in runs:
            for workers in (0, args.workers):
                run_cfg = config_lib.load(args.config, [*args.overrides, *extra, f"data.num_workers={workers}"])
                rate = measure(run_cfg, args.batches)
                print(f"{label}, {workers} workers: {rate:,.0f} tokens/s per host", flush=True)


if __name__ == "__main__":
    main()

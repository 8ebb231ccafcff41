"""Input-pipeline throughput per host: tokens/s through tokenize + objective + packing + batching.

    python benchmarks/data_throughput.py [configs/tiny.yaml] [key=value ...] [--batches 200]

Reads the configured source (stdlib text by default; a tfds ArrayRecord dataset
with data.source=tfds data.tfds_name=... data.data_dir=...) with the configured
tokenizer, on-the-fly, in this process, with and without the prefetch thread.
"""

from __future__ import annotations

import argparse
import time

from pretrax import config as config_lib
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.prefetch import Prefetcher


def measure(iterator, batches: int) -> float:
    next(iterator)  # start-up (first reads, thread start) is not throughput
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += int((next(iterator)["segment_ids"] > 0).sum())
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.overrides)
    sources = ", ".join(s.source if s.source != "tfds" else f"tfds:{s.tfds_name}" for s in cfg.data.sources)
    print(f"source: {sources}; tokenizer: {cfg.data.tokenizer}; batch {cfg.train.batch_size} x {cfg.data.seq_len}")
    print(f"in-process: {measure(make_train_iterator(cfg), args.batches):,.0f} tokens/s")
    prefetcher = Prefetcher(make_train_iterator(cfg), 4)
    print(f"prefetch thread: {measure(prefetcher, args.batches):,.0f} tokens/s")
    prefetcher.close()


if __name__ == "__main__":
    main()

"""Held-out loss of trained runs at their training length and beyond (length extrapolation).

    python benchmarks/length_extrapolation.py RUN_DIR [RUN_DIR ...] [--lengths 1,2,4]

For each run (its newest checkpoint) and each multiple k of its data.seq_len, the held-out loss and bits
per byte over the run's held-out batches (train.eval_batches x train.batch_size rows) built at k x seq_len
tokens per row. Long documents fill whole rows, so positions then reach k x seq_len - 1: past anything the
model trained on. A learned position table shorter than a length is reported, not evaluated. One line per
(run, length); results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pretrax import config as config_lib  # noqa: E402
from pretrax.generate import load_run  # noqa: E402
from pretrax.plan import make_plan  # noqa: E402
from pretrax.train.evaluation import make_evaluator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--lengths", default="1,2,4", help="multiples of the run's data.seq_len")
    args = parser.parse_args()
    multiples = [int(k) for k in args.lengths.split(",")]
    for run_dir in args.runs:
        cfg, _, _, params, step = load_run(run_dir)
        base = cfg.data.seq_len
        for k in multiples:
            length = k * base
            m = cfg.model
            if m.positions == "learned" and (m.max_seq_len or base) < length:
                print(f"{run_dir}\tpositions {m.positions}\tstep {step}\tlength {length}\t"
                      f"n/a: the learned table holds {m.max_seq_len or base} positions")
                continue
            long_cfg = config_lib.from_dict(cfg.to_dict(), [f"data.seq_len={length}"])
            plan = make_plan(long_cfg, training=False)
            scores = make_evaluator(long_cfg, plan.setup, plan.tokenizer)(params)
            print(f"{run_dir}\tpositions {m.positions}\tstep {step}\tlength {length}\t"
                  f"loss {scores['eval_loss']:.4f}\tbits/byte {scores['eval_bits_per_byte']:.4f}", flush=True)


if __name__ == "__main__":
    main()

"""Checkpoint save and restore time, on a local disk and on a GCS server, and what the async save costs a step.

    python benchmarks/checkpoint_io.py [configs/tiny.yaml] [key=value ...] [--saves 5] [--steps 20]

Uses the real train state of the config (parameters and Adam moments, sharded
over this host's devices), the real pretrax.train.checkpoint save/restore
(async Orbax), and for gs:// a fake-gcs-server started on a free localhost
port (the test suite's server; `make test` installs it). Prints per target:
  blocking   how long save() holds the train loop before training goes on
  finish     save() until the checkpoint is complete (the rest runs in the background)
  restore    the newest checkpoint read back onto the shardings
and the blocking time as a share of the time between two checkpoints
(checkpoint.every steps of the measured step time). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import gcs_fixture  # noqa: E402  (sets the emulator variables before gcsfs and tensorstore load)

import jax  # noqa: E402

from pretrax import config as config_lib  # noqa: E402
from pretrax.data.pipeline import make_train_iterator  # noqa: E402
from pretrax.data.tokenizer import load_tokenizer  # noqa: E402
from pretrax.parallel.mesh import make_mesh  # noqa: E402
from pretrax.train import checkpoint as ckpt  # noqa: E402
from pretrax.train.state import init_state, make_setup, model_vocab_size, param_count  # noqa: E402
from pretrax.train.step import make_train_step, to_global  # noqa: E402


def step_time(cfg, setup, state, steps: int) -> tuple[float, dict]:
    """Seconds per train step, and the state after them (the step donates its input state)."""
    step = make_train_step(setup)
    data = make_train_iterator(cfg)
    batches = [to_global(setup, next(data)) for _ in range(steps + 2)]
    data.close()
    for b in batches[:2]:  # compile and warm up
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for b in batches[2:]:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps, state


def measure(run_dir: str, cfg, setup, state, saves: int) -> dict[str, float]:
    cfg = cfg.replace(**{"run.dir": run_dir, "checkpoint.keep": saves + 1})
    data_state = {"first_row": 0, "doc": [0], "offset": [0]}
    blocking, finish = [], []
    manager = ckpt.open_manager(run_dir, cfg.checkpoint)
    for i in range(1, saves + 1):
        t0 = time.perf_counter()
        ckpt.save(manager, i, state, data_state, cfg)
        t1 = time.perf_counter()
        ckpt.wait(manager)
        t2 = time.perf_counter()
        blocking.append(t1 - t0)
        finish.append(t2 - t0)
    manager.close()
    restore = []
    for _ in range(3):
        t0 = time.perf_counter()
        step, restored, _, _ = ckpt.restore_latest_good(run_dir, cfg, setup.abstract_state())
        jax.block_until_ready(restored)
        restore.append(time.perf_counter() - t0)
        assert step == saves
    return {"blocking_s": statistics.median(blocking), "finish_s": statistics.median(finish),
            "restore_s": statistics.median(restore)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="train steps timed for the step time")
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.overrides)
    vocab = model_vocab_size(cfg, load_tokenizer(cfg.data.tokenizer).vocab_size)
    setup = make_setup(cfg, make_mesh(cfg.mesh), vocab)
    state = init_state(setup, cfg.run.seed)
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(f"config {args.config}: {param_count(setup.abstract_params):,} parameters, state {size / 2**20:.1f} MiB, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), checkpoint.every={cfg.checkpoint.every}")
    seconds, state = step_time(cfg, setup, state, args.steps)
    print(f"step time: {seconds * 1e3:.1f} ms")
    server = gcs_fixture.GCSServer()
    targets = {"local disk": os.path.join(tempfile.mkdtemp(prefix="ckpt-bench-"), "run"),
               "fake-gcs-server": server.make_bucket() + "/run"}
    try:
        for name, run_dir in targets.items():
            m = measure(run_dir, cfg, setup, state, args.saves)
            share = m["blocking_s"] / (cfg.checkpoint.every * seconds)
            print(f"{name:>16}: save blocks {m['blocking_s'] * 1e3:.0f} ms, complete after {m['finish_s'] * 1e3:.0f} ms, "
                  f"restore {m['restore_s'] * 1e3:.0f} ms; blocking = {100 * share:.2f}% of the "
                  f"{cfg.checkpoint.every} steps between checkpoints")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""Steady-state training throughput of a config: tokens/s, step time and model FLOP/s.

    python benchmarks/train_throughput.py configs/tiny.yaml [key=value ...] [--steps 30] [--warmup 5]

Runs the real jitted train step (same state, shardings and data as `pretrax
train`) with no checkpoints or eval, excludes compilation and the first
--warmup steps, and prints one line per figure. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import jax

from pretrax import config as config_lib
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.tokenizer import load_tokenizer
from pretrax.flops import flops_per_token
from pretrax.parallel.mesh import make_mesh
from pretrax.train.state import init_state, make_setup, max_positions, model_vocab_size, param_count
from pretrax.train.step import make_train_step, to_global


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.overrides)
    vocab = model_vocab_size(cfg, load_tokenizer(cfg.data.tokenizer).vocab_size)
    setup = make_setup(cfg, make_mesh(cfg.mesh), vocab)
    state = init_state(setup, cfg.run.seed)
    step = make_train_step(setup)
    data = make_train_iterator(cfg)
    batches = [to_global(setup, next(data)) for _ in range(args.steps + args.warmup)]
    t0 = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for b in batches[1 : args.warmup]:
        state, m = step(state, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in batches[args.warmup :]:
        state, m = step(state, b)
    jax.block_until_ready(m)
    elapsed = time.perf_counter() - t0
    n = param_count(setup.abstract_params)
    tokens = cfg.train.batch_size * cfg.data.seq_len * args.steps
    fpt = flops_per_token(n, cfg.model, vocab, cfg.data.seq_len, max_positions(cfg))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, mesh {dict(setup.mesh.shape)}")
    print(f"parameters: {n:,}")
    print(f"first step (compile + run): {compile_s:.2f} s")
    print(f"step time: {elapsed / args.steps * 1000:.1f} ms")
    print(f"tokens/s: {tokens / elapsed:,.0f}")
    print(f"model FLOP/s: {tokens / elapsed * fpt:.3g}")


if __name__ == "__main__":
    main()

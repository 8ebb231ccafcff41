"""Sampling speed with the KV cache against the recompute path: new tokens per second.

    python benchmarks/generate_cache.py [configs/tiny.yaml] [key=value ...] [--new-tokens 256] [--repeats 3]

The config's model, freshly initialised (seed run.seed; the weights do not change the work
done), greedy, never stopping at eos, from the prompt "def " (bos + 4 byte tokens).
Compilation is excluded (one short warm-up call per path first); each path is timed
--repeats times and the fastest run is printed. Past the window (data.seq_len, 128
for tiny) the cached path refills from the newest half of it; the recompute path runs
the whole window for every token. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
from flax import nnx

from pretrax import config as config_lib
from pretrax.data.tokenizer import config_tokenizer
from pretrax.generate import decoder_new_ids
from pretrax.parallel.mesh import make_mesh
from pretrax.train.state import build_model, make_setup, max_positions, model_vocab_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = config_lib.load(args.config, ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", *args.overrides])
    tok = config_tokenizer(cfg.data)
    setup = make_setup(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), model_vocab_size(cfg, tok.vocab_size))
    params = jax.jit(lambda: nnx.state(build_model(cfg, setup.vocab_size, cfg.run.seed), nnx.Param))()
    ids = [tok.bos_id] + tok.encode("def ")
    print(f"model: {' '.join([args.config, *args.overrides])} (fresh init), window {max_positions(cfg)}, "
          f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, greedy; "
          f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
    rates = {}
    for cache in (True, False):
        decoder_new_ids(setup, params, ids, max_new_tokens=2, cache=cache)  # compiles
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            new = decoder_new_ids(setup, params, ids, max_new_tokens=args.new_tokens, cache=cache)
            best = min(best, time.perf_counter() - start)
        assert len(new) == args.new_tokens
        rates[cache] = args.new_tokens / best
        print(f"{'cache' if cache else 'recompute'}: {rates[cache]:.1f} new tokens/s ({best:.3f} s)")
    print(f"speedup: {rates[True] / rates[False]:.1f}x")


if __name__ == "__main__":
    main()

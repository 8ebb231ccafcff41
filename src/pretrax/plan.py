"""The run plan: a config resolved against its tokenizer and devices, once, for every entry point.

`make_plan` runs the prologue every command shares (tokenizer -> sizes -> mesh -> batch check ->
the state's layout -> FLOPs) and the checks that need more than one section, and returns a typed
plan that prints itself. train, bench, compile, generate, export, score, eval, coordcheck and info
start from it, so none derives a size or repeats a check on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
from jax.sharding import Mesh

from pretrax.config import Config
from pretrax.data.tokenizer import config_tokenizer
from pretrax.errors import ConfigError
from pretrax.flops import StepFlops, step_flops
from pretrax.parallel.mesh import batch_parallelism, make_mesh
from pretrax.sizes import Sizes, resolve_sizes
from pretrax.train.state import TrainSetup, make_setup, param_count


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will be: its sizes, mesh, state layout and FLOPs (nothing allocated)."""

    cfg: Config
    tokenizer: Any
    sizes: Sizes
    setup: TrainSetup
    flops: StepFlops

    @property
    def mesh(self) -> Mesh:
        return self.setup.mesh

    @property
    def vocab_size(self) -> int:
        return self.sizes.vocab_size

    @property
    def data_parallel(self) -> int:
        """How many ways each micro-batch is split (mesh.data x mesh.fsdp x slices, as the rules map 'batch')."""
        return batch_parallelism(self.mesh, dict(self.cfg.mesh.rules))

    @property
    def per_device_batch(self) -> float:
        return self.sizes.micro_batch / self.data_parallel

    @property
    def params(self) -> int:
        return param_count(self.setup.abstract_params)

    def lines(self) -> list[str]:
        """The plan as start-up lines: mesh, tokens per step, FLOPs per token."""
        mesh = self.mesh
        return [
            f"mesh: {dict(mesh.shape)} on {mesh.devices.size} {mesh.devices.flat[0].platform} device(s), "
            f"{jax.process_count()} process(es)",
            f"tokens per step: {self.sizes.tokens_per_step:,} ({self.sizes.row()}); "
            f"{self.per_device_batch:g} sequences per device per micro-batch",
            f"FLOPs per token: {self.flops.per_token:.3g} ({self.flops.note}; "
            f"train.mfu_attention={self.flops.convention})",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def check_batch(cfg: Config, mesh: Mesh) -> None:
    """The batch splits evenly over the data-parallel devices and the hosts."""
    ways = batch_parallelism(mesh, dict(cfg.mesh.rules))
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if micro % ways:
        raise ConfigError(
            f"train.batch_size / train.grad_accum = {micro} sequences per micro-batch is not divisible by the "
            f"data-parallel size {ways} (mesh.data * mesh.fsdp, times mesh.dcn_data slices); use a multiple of {ways}"
        )
    if cfg.train.batch_size % jax.process_count():
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by the number of hosts ({jax.process_count()})"
        )


def check_vocab(sizes: Sizes, tokenizer) -> None:
    """An explicit model.vocab_size must hold every id the tokenizer makes."""
    if sizes.vocab_size < tokenizer.vocab_size:
        ordinary = tokenizer.vocab_size - tokenizer.num_sentinels
        raise ConfigError(
            f"model.vocab_size ({sizes.vocab_size}) is smaller than the tokenizer's {tokenizer.vocab_size} ids "
            f"({ordinary} ordinary + data.num_sentinels={tokenizer.num_sentinels} sentinels); use 0 (automatic) "
            "or a larger value, or fewer data.num_sentinels"
        )


def make_plan(cfg: Config, *, devices: Sequence[Any] | None = None, tokenizer: Any = None,
              training: bool = True) -> RunPlan:
    """cfg's plan on `devices` (None: every device of every process). tokenizer: the one to use (None: the
    config's, data.tokenizer). training=False: a trained model to sample from or score, whose training
    batch need not split over these devices. ConfigError, one line, for anything that cannot run."""
    tokenizer = config_tokenizer(cfg.data) if tokenizer is None else tokenizer
    sizes = resolve_sizes(cfg, tokenizer.vocab_size)
    check_vocab(sizes, tokenizer)
    mesh = make_mesh(cfg.mesh, devices)
    if training:
        check_batch(cfg, mesh)
    setup = make_setup(cfg, mesh, sizes.vocab_size)
    return RunPlan(cfg, tokenizer, sizes, setup, step_flops(cfg, sizes.vocab_size, setup.abstract_params))

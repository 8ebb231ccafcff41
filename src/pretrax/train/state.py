"""The train state, created already sharded.

The state is a plain dict {step, params, opt_state, rng}. Its shapes and
logical axes come from an abstract model (nnx.eval_shape, no memory used);
the logical names go through the config's rules table to NamedShardings; then
the model and optimizer are initialised inside one jax.jit whose
out_shardings place every array where it belongs, so no full copy of the
model ever exists on one device.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pretrax.config import Config
from pretrax.models import build_model, max_positions  # noqa: F401 (callers import them from here too)
from pretrax.models import splash
from pretrax.models.attention_backends import check_backend
from pretrax.models.family import family_of
from pretrax.models.moe import expert_share
from pretrax.models.param_groups import ParamTable, param_table
from pretrax.parallel.rules import tree_shardings
from pretrax.sizes import model_vocab_size  # noqa: F401 (callers import it from here too)
from pretrax.train.optimizer import make_optimizer, opt_state_shardings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything static about a run's state: structure, shardings, optimizer."""

    cfg: Config
    mesh: Mesh
    vocab_size: int
    graphdef: Any
    abstract_params: Any
    logical_specs: Any
    tx: optax.GradientTransformation
    state_shardings: dict
    param_groups: ParamTable  # role, weight decay, LR factor, FLOPs side of every parameter

    def abstract_state(self) -> dict:
        """ShapeDtypeStructs of the whole state, with their target shardings (used to restore)."""
        shapes = jax.eval_shape(lambda: state_from_key(self, jax.random.key(0)))
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, self.state_shardings
        )


def make_setup(cfg: Config, mesh: Mesh, vocab_size: int) -> TrainSetup:
    check_attention(cfg, mesh.devices.flat[0].platform)
    abstract_model = nnx.eval_shape(lambda: build_model(cfg, vocab_size, 0))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    logical_specs = nnx.get_partition_spec(abstract_params)
    groups = param_table(logical_specs, abstract_params, tie_embeddings=cfg.model.tie_embeddings,
                         parametrization=abstract_model.parametrization, optimizer=cfg.optim.name,
                         expert_share=expert_share(cfg.model))
    tx = make_optimizer(cfg.optim, cfg.train.steps, logical_specs, groups.lr_multipliers(),  # None under sp
                        groups.decay_mask(), scale_decay=cfg.parametrization.scale_weight_decay)
    rules = dict(cfg.mesh.rules)
    param_shardings = tree_shardings(abstract_params, logical_specs, mesh, rules)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    # optimizer moments mirror their parameter's sharding; counters etc. are replicated
    opt_shardings = opt_state_shardings(tx, abstract_opt, abstract_params, param_shardings, replicated)
    state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "rng": replicated}
    return TrainSetup(cfg, mesh, vocab_size, graphdef, abstract_params, logical_specs, tx, state_shardings, groups)


def check_attention(cfg: Config, platform: str) -> None:
    """Refuse, before anything is built, a model.attention backend that cannot run on `platform`."""
    m = cfg.model
    check_backend(m.attention, platform=platform, dtype=m.dtype, has_bias=m.positions in ("relative", "alibi"))
    if m.attention == "splash" and platform != "tpu":
        log.warning("model.attention=splash on %s runs the TPU kernel interpreted: correct but very slow "
                    "(for tests); model.attention=xla is the fast choice here", platform)
    if m.attention == "splash":  # the kernel's tiles must divide the lengths
        splash.block_sizes(*family_of(m).attention_lengths(cfg.data))


def state_from_key(setup: TrainSetup, key: jax.Array) -> dict:
    """A fresh state's arrays, drawn from a (traced) key; jax.random.key(seed) gives what nnx.Rngs(seed) draws."""
    model = build_model(setup.cfg, setup.vocab_size, key)
    params = nnx.state(model, nnx.Param)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": setup.tx.init(params),
        "rng": jax.random.key_data(jax.random.fold_in(key, 1)),
    }


def init_state(setup: TrainSetup, seed: int) -> dict:
    """A fresh state, every array created directly in its sharded place. The seed is an argument of the
    program, not a constant in it: runs that differ only in their seed (a sweep over seeds) share one
    compile, here and in a persistent compilation cache."""
    init = jax.jit(lambda s: state_from_key(setup, jax.random.key(s)), out_shardings=setup.state_shardings)
    return init(np.uint32(seed % 2**32))  # what jax.random.key(seed) keeps of any int (64-bit off)


def param_count(abstract_params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(abstract_params))

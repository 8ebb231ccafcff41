"""How a checkpoint write treats small replicated arrays: each is written whole by one replica, so a save
compiles no per-device slices (Orbax's replica-parallel split did, per device and shape), and setting that up
logs nothing."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrax.parallel.mesh import make_mesh
from pretrax.train import checkpoint


def test_registering_the_array_handler_logs_nothing(caplog):
    """The module registers its handler on import; registering it again must not log Orbax's override warning.
    (The absl logger's own level is lowered too: a `pretrax` command run earlier in this process raised it.)"""
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="absl"):
        checkpoint._register_array_handler()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.devices(8)
def test_a_save_of_small_replicated_arrays_compiles_nothing_and_restores(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg("mesh.data=8", run_dir=str(tmp_path / "run"))
    replicated = NamedSharding(make_mesh(cfg.mesh), P())
    state = {f"w{i}": jax.device_put(jnp.arange(16 + i, dtype=jnp.float32), replicated) for i in range(4)}
    jax.block_until_ready(state)
    manager = checkpoint.open_manager(cfg.run.dir, cfg.checkpoint)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        checkpoint.save(manager, 1, state, {"position": 3}, cfg)
        checkpoint.wait(manager)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiles == []
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in state.items()}
    restored, data = checkpoint.restore(manager, 1, abstract)
    assert data == {"position": 3}
    for k, v in state.items():
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v))

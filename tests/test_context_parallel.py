"""Context parallelism (mesh.context): the sequence split over devices, keys and values gathered for
attention (or passed around the ring: model.attention=ring); the same losses as without it on the
8-device CPU mesh."""

import numpy as np
import pytest

from pretrax.errors import ConfigError
from pretrax.train.loop import train


@pytest.mark.slow
@pytest.mark.devices(8)
@pytest.mark.parametrize("extra, backends", [
    ([], ["xla", "ring"]),  # keys and values gathered, or passed around the ring
    (["model.positions=alibi", "model.attention_window=12"], ["ring"]),
    (["model.kind=encoder_decoder", "model.positions=relative", "data.objective=span_corruption",
      "data.seq_len=64", "model.n_layers=1"], ["ring"])], ids=["rope", "alibi-window", "encoder-decoder"])
def test_a_split_sequence_gives_the_unsplit_losses(tiny_cfg, tmp_path, extra, backends):
    """(The gathering path is one sharding constraint on keys and values, the same with a bias or a window;
    the ring computes those itself, so it is the one run with them. The encoder-decoder has one layer a side:
    each of its three attentions, bidirectional, causal and cross, once.)"""
    curves = {}
    meshes = {"data": ["mesh.data=8"]}
    meshes.update({backend: ["mesh.data=2", "mesh.context=4", f"model.attention={backend}"] for backend in backends})
    for name, mesh in meshes.items():
        cfg = tiny_cfg(*extra, *mesh, "train.steps=4", "checkpoint.every=100", run_dir=str(tmp_path / name))
        losses = train(cfg, progress=False).losses
        curves[name] = np.array([losses[s] for s in range(1, 5)])
    assert curves["data"][-1] < curves["data"][0]
    for backend in backends:
        np.testing.assert_allclose(curves[backend], curves["data"], rtol=2e-5)


@pytest.mark.devices(8)
def test_batches_and_activations_are_split_along_the_sequence(tiny_cfg):
    from jax.sharding import PartitionSpec as P

    from pretrax.parallel.activations import sharding_context
    from pretrax.plan import make_plan
    from pretrax.train.step import batch_shardings

    setup = make_plan(tiny_cfg("mesh.data=2", "mesh.context=4")).setup
    assert batch_shardings(setup)["inputs"].spec == P("data", "context")  # (B, T): rows and positions split
    with sharding_context(setup.mesh, setup.cfg.mesh.rules) as ctx:  # the residual stream, and whole keys
        assert ctx.spec(("batch", "length", "act_embed"), (8, 32, 32)) == P("data", "context")
        assert ctx.spec(("batch", None, "kv_heads", "head_dim"), (8, 32, 4, 8)) == P("data")


def test_a_context_axis_that_does_not_divide_the_sequence_is_one_line(tiny_cfg):
    with pytest.raises(ConfigError) as e:
        tiny_cfg("mesh.data=2", "mesh.context=4", "data.seq_len=30")
    assert "mesh.context=4 splits the sequence, but data.seq_len=30 is not divisible by it" in str(e.value)

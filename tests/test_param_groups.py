"""The parameter-group table: its rows on small models, and that the optimizer and FLOPs use what it says."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax.config import load
from pretrax.flops import matmul_params, step_flops
from pretrax.parallel.mesh import make_mesh
from pretrax.train.state import make_setup, max_positions

V = 384
DECODER = ["model.d_model=64", "model.n_heads=4", "model.d_ff=128", "model.n_layers=2", "model.use_bias=true",
           "model.positions=learned", "model.max_seq_len=32", "data.seq_len=32", "train.batch_size=4",
           "model.tie_embeddings=false", "parametrization.kind=mup", "parametrization.base_d_model=32"]  # m = 2
ENC_DEC = ["model.kind=encoder_decoder", "model.positions=relative", "data.objective=span_corruption",
           "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.n_layers=2", "model.n_encoder_layers=3",
           "data.inputs_len=48", "data.targets_len=16", "train.batch_size=4"]


def setup_of(overrides):
    cfg = load(None, overrides)
    return cfg, make_setup(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), V)


@pytest.mark.parametrize("optimizer, hidden", [("adamw", 1 / 2), ("adafactor", 1 / math.sqrt(2))])
def test_rows_of_a_mup_decoder(optimizer, hidden):
    _, setup = setup_of(DECODER + [f"optim.name={optimizer}"])
    rows = {r.path: r for r in setup.param_groups.rows}
    name = lambda path: path.rsplit(".", 1)[-1]  # noqa: E731
    for r in rows.values():
        if name(r.path) in ("bias", "scale"):  # biases (q/k/v biases have two axes) and norm gains
            assert (r.role, r.decayed, r.lr_mult) == ("vector", False, 1.0), r
    for path in ("embed.table", "positions.table"):
        assert (rows[path].role, rows[path].decayed, rows[path].lr_mult, rows[path].flops_side) == \
            ("embedding", True, 1.0, None)
    assert (rows["unembed.kernel"].role, rows["unembed.kernel"].lr_mult) == ("readout", 1.0)
    assert rows["unembed.kernel"].shape == (64, V) and rows["unembed.kernel"].flops_side == "decoder"
    kernels = [r for r in rows.values() if r.path.startswith("blocks") and name(r.path) == "kernel"]
    assert len(kernels) == 2 * 7  # q, k, v, out, gate, up, down in each of 2 layers
    for r in kernels:
        assert (r.role, r.decayed, r.flops_side) == ("hidden", True, "decoder") and r.lr_mult == pytest.approx(hidden)
    assert setup.param_groups.size() == sum(x.size for x in jax.tree.leaves(setup.abstract_params))


def test_the_optimizer_decays_and_scales_as_the_table_says():
    # params 2, gradients 1, wd 0.5: Adam's first step is -lr * factor, the decay -lr * 0.5 * 2 where decayed
    cfg, setup = setup_of(DECODER + ["optim.warmup_steps=0", "optim.schedule=constant", "optim.clip_norm=0",
                                     "optim.weight_decay=0.5"])
    rows = setup.param_groups.rows
    params = jax.tree.map(lambda x: jnp.full(x.shape, 2.0, x.dtype), setup.abstract_params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(setup.tx.update)(grads, setup.tx.init(params), params)
    for r, u in zip(rows, jax.tree.leaves(updates)):
        np.testing.assert_allclose(np.asarray(u), -cfg.optim.lr * (r.lr_mult + r.decayed), rtol=1e-5, err_msg=r.path)
    assert {r.decayed for r in rows} == {True, False} and len({r.lr_mult for r in rows}) == 2


def test_decay_mask_and_lr_multipliers_are_the_rows():
    _, setup = setup_of(DECODER)
    table = setup.param_groups
    assert jax.tree.leaves(table.decay_mask()) == [r.decayed for r in table.rows]
    assert jax.tree.leaves(table.lr_multipliers()) == [r.lr_mult for r in table.rows]
    _, sp = setup_of(DECODER[:-2])
    assert sp.param_groups.lr_multipliers() is None  # plain optax.adamw under sp


@pytest.mark.parametrize("tied", [True, False])
def test_decoder_flops_count_the_decoder_side(tied):
    cfg, setup = setup_of(DECODER + [f"model.tie_embeddings={str(tied).lower()}"])
    table = setup.param_groups
    assert table.size(side="decoder") == matmul_params(table.size(), cfg.model, V, max_positions(cfg))  # by hand
    assert ({r.path: r.flops_side for r in table.rows}["embed.table"] == "decoder") == tied
    assert step_flops(cfg, V, setup.abstract_params).matmul == 6 * 4 * 32 * table.size(side="decoder")


def test_encoder_decoder_sides():
    cfg, setup = setup_of(ENC_DEC)
    table = setup.param_groups
    for r in table.rows:
        cross_kv = ".cross.key." in r.path or ".cross.value." in r.path
        lookup = (r.path == "embed.table" and not cfg.model.tie_embeddings) or r.path.endswith("relpos.embedding")
        side = None if lookup else "encoder" if r.path.startswith("encoder.") or cross_kv else "decoder"
        assert r.flops_side == side, r
        if r.path.endswith("relpos.embedding"):
            assert r.role == "embedding"
    assert table.size(side="encoder") and table.size(side="decoder") and table.size(side=None)
    S, T, B = 48, 16, 4
    assert step_flops(cfg, V, setup.abstract_params).matmul == \
        6 * B * (S * table.size(side="encoder") + T * table.size(side="decoder"))


def test_summary_is_one_line_per_role():
    _, setup = setup_of(DECODER)
    lines = setup.param_groups.summary().splitlines()
    assert lines[0] == "parameter groups:" and [line.split()[0] for line in lines[2:]] == \
        ["vector", "embedding", "hidden", "readout"]
    hidden = lines[4].split()
    assert hidden[1] == "14" and hidden[3:5] == ["yes", "0.5"] and hidden[5] == "decoder"
    assert sum(int(line.split()[2].replace(",", "")) for line in lines[2:]) == setup.param_groups.size()

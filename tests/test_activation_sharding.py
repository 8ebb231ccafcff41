"""Activation sharding: under fsdp no device holds a whole global batch of activations."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pretrax.parallel import activations
from pretrax.parallel.mesh import make_mesh
from pretrax.train import step as step_lib
from pretrax.train.state import make_setup

BATCH, SEQ, VOCAB = 64, 32, 384


def compiled_train_step(cfg):
    setup = make_setup(cfg, make_mesh(cfg.mesh), VOCAB)
    batch = {k: jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32, sharding=s)
             for k, s in step_lib.batch_shardings(setup).items()}
    # XLA:CPU's default fusion code generator, which the suite's conftest turns off for speed: the older one
    # leaves the embedding lookup of the whole batch's tokens (64, 32, D/8) unsliced in the program text
    return step_lib.make_train_step(setup).lower(setup.abstract_state(), batch).compile(
        {"xla_cpu_use_fusion_emitters": True})


@pytest.mark.slow
@pytest.mark.devices(8)
@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_fsdp_train_step_holds_no_whole_batch_activation(tiny_cfg, kind):
    """Weights split over fsdp along 'embed' and a batch split over the same axis: without the
    model's activation constraints XLA kept (64, 32, ...) logits, MLP and attention arrays on
    every device (measured while building this: 11 whole-batch logits arrays, 3x the temporaries)."""
    extra = ["model.kind=encoder_decoder", "model.positions=relative", "data.objective=span_corruption",
             f"data.inputs_len={SEQ}", f"data.targets_len={SEQ}"] if kind == "encoder_decoder" else []
    # d_model 96: no weight has a dimension equal to BATCH, so any rank-3+ array led by BATCH is activations:
    # (B, T, D) residuals and logits, (B, T, F) MLP, and (B, K, G, T, S) attention scores alike
    cfg = tiny_cfg("mesh.data=1", "mesh.fsdp=8", f"train.batch_size={BATCH}", "model.d_model=96",
                   "model.d_ff=256", *extra)
    hlo = compiled_train_step(cfg).as_text()
    whole_batch = sorted(set(re.findall(rf"(?:f32|bf16)\[{BATCH},\d+,\d+[0-9,]*\]", hlo)))
    assert whole_batch == []
    assert re.search(rf"f32\[{BATCH // 8},{SEQ},{VOCAB}\]", hlo)  # the logits, one eighth per device
    assert re.search(rf"(?:f32|bf16)\[{BATCH // 8},\d+,\d+,{SEQ},{SEQ}\]", hlo)  # (B, K, G, T, S) scores, split too


@pytest.mark.devices(8)
def test_constrain_lays_out_by_the_rules_table():
    mesh = make_mesh(type("M", (), {"data": 2, "fsdp": 2, "expert": 1, "context": 1, "tensor": 2})())
    rules = {"batch": ["data", "fsdp"], "length": None, "act_embed": None, "mlp": "tensor"}
    x = jnp.ones((8, 4, 6))
    assert activations.constrain(x, ("batch", "length", "act_embed")) is x  # no context: untouched
    with activations.sharding_context(mesh, rules):
        fn = jax.jit(lambda x: (activations.constrain(x, ("batch", "length", "act_embed")),
                                activations.constrain(x, ("batch", "length", "mlp")),
                                activations.constrain(x[:3], ("batch", "length", "act_embed"))))
        residual, hidden, odd = fn(x)
    assert residual.sharding.spec == P(("data", "fsdp"))
    assert hidden.sharding.spec == P(("data", "fsdp"), None, "tensor")
    assert odd.sharding.spec == P()  # 3 rows do not split 4 ways: kept whole rather than refused
    np.testing.assert_array_equal(np.asarray(hidden), np.asarray(x))
    assert activations.current() is None  # the context ends with its block

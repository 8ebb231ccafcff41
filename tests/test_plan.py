"""The run plan: every size resolved once (by hand on small configs), the shared checks, the printed plan."""

import jax
import pytest

from pretrax.config import load
from pretrax.data.tokenizer import load_tokenizer
from pretrax.errors import ConfigError
from pretrax.plan import make_plan
from pretrax.sizes import resolve_sizes

DECODER = ["model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=128", "model.n_layers=3",
           "data.seq_len=32", "train.batch_size=8", "train.grad_accum=2"]
ENC_DEC = ["model.kind=encoder_decoder", "model.positions=relative", "data.objective=span_corruption",
           "model.d_model=32", "model.n_heads=4", "model.head_dim=16", "model.d_ff=64", "model.n_layers=2",
           "data.seq_len=40", "data.targets_len=16", "train.batch_size=4"]


def test_decoder_sizes_fill_every_open_field():
    s = resolve_sizes(load(None, DECODER), 259)  # bytes + specials: padded up to a multiple of 128
    assert (s.kind, s.vocab_size, s.window, s.row_tokens, s.inputs_len) == ("decoder", 384, 32, 32, 0)
    assert (s.head_dim, s.kv_heads, s.encoder_layers, s.decoder_layers) == (16, 2, 0, 3)
    assert (s.micro_batch, s.tokens_per_step, s.row()) == (4, 8 * 32, "8 x 32")
    assert resolve_sizes(load(None, DECODER + ["model.vocab_size=300", "model.max_seq_len=64"]), 259).vocab_size \
        == 300
    assert resolve_sizes(load(None, DECODER + ["model.max_seq_len=64"]), 259).window == 64


def test_encoder_decoder_sizes_take_seq_len_for_the_lengths_left_at_zero():
    s = resolve_sizes(load(None, ENC_DEC), 128)
    # inputs_len 0 -> data.seq_len; targets_len given; n_encoder_layers 0 -> n_layers; head_dim given
    assert (s.vocab_size, s.inputs_len, s.row_tokens, s.encoder_layers, s.decoder_layers, s.head_dim) == \
        (128, 40, 16, 2, 2, 16)
    assert s.tokens_per_step == 4 * 16 and s.row() == "4 x 16 decoder tokens, 40 encoder tokens per row"
    assert resolve_sizes(load(None, ENC_DEC + ["model.n_encoder_layers=3"]), 128).encoder_layers == 3


def test_the_plan_lays_out_the_run_and_prints_it():
    cfg = load(None, DECODER + ["mesh.data=2", "mesh.fsdp=2"])
    plan = make_plan(cfg, devices=jax.devices()[:4], tokenizer=load_tokenizer("bytes"))
    assert dict(plan.mesh.shape) == {"data": 2, "fsdp": 2, "expert": 1, "context": 1, "tensor": 1}
    assert (plan.data_parallel, plan.per_device_batch) == (4, 1.0)  # 8 rows / 2 micro-batches / 4 ways
    assert plan.setup.vocab_size == plan.vocab_size == 384
    assert plan.flops.tokens == 8 * 32 and plan.params == sum(r.size for r in plan.setup.param_groups.rows)
    text = str(plan)
    assert "tokens per step: 256 (8 x 32); 1 sequences per device per micro-batch" in text
    assert f"FLOPs per token: {plan.flops.per_token:.3g}" in text and "4 cpu device(s)" in text


def test_the_plan_refuses_a_batch_the_devices_cannot_split_unless_it_only_serves_a_trained_model():
    cfg = load(None, DECODER + ["mesh.data=8"])  # 8 rows / 2 micro-batches = 4, over 8 ways
    with pytest.raises(ConfigError, match="4 sequences per micro-batch is not divisible by the data-parallel size 8"):
        make_plan(cfg, devices=jax.devices()[:8])
    assert make_plan(cfg, devices=jax.devices()[:8], training=False).data_parallel == 8


def test_the_plan_refuses_a_vocabulary_smaller_than_the_tokenizers():
    with pytest.raises(ConfigError, match=r"model.vocab_size \(200\) is smaller than the tokenizer's"):
        make_plan(load(None, DECODER + ["model.vocab_size=200"]), devices=jax.devices()[:1])

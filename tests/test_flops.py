"""Model FLOPs against counts worked out by hand from each architecture's published shape, under both
attention conventions (train.mfu_attention: full as PaLM counts, causal halved)."""

import pytest
from flax import nnx

from pretrax import config as config_lib
from pretrax.errors import ConfigError
from pretrax.flops import flops_per_token, step_flops
from pretrax.models import count_params
from pretrax.train.state import build_model


@pytest.mark.parametrize("convention, share", [("full", 1.0), ("causal", 0.5)])
def test_small_decoder_flops_per_token_by_hand(convention, share):
    """PaLM appendix B: 6N + 12·L·H·Q·T per token with attention in full; causal halves the attention term."""
    V, D, L, N, F, T = 256, 32, 2, 4, 64, 16  # heads N of size H = Q = D / N = 8
    cfg = config_lib.load(None, [f"model.d_model={D}", f"model.n_layers={L}", f"model.n_heads={N}",
                                 f"model.d_ff={F}", f"data.seq_len={T}", f"train.mfu_attention={convention}"])
    n = L * (4 * D * D + 3 * D * F + 2 * D) + D + V * D  # q, k, v, o; SwiGLU; 2 RMSNorms; final norm; tied table
    assert count_params(cfg.model, V, T) == n  # rotary positions and a tied table: every parameter is a matmul
    by_hand = {"full": 6 * n + 12 * L * D * T, "causal": 6 * n + 6 * L * D * T}[convention]  # N·H = D
    got = step_flops(cfg, V)
    assert got.per_token == by_hand and got.convention == convention
    assert got.attention == share * 12 * L * D * T * T * cfg.train.batch_size
    assert flops_per_token(n, cfg.model, V, T, T, convention) == by_hand
    assert step_flops(cfg, V, attention="full" if convention == "causal" else "causal").per_token != by_hand


def test_full_attention_is_the_default_and_other_conventions_are_refused():
    assert config_lib.load(None).train.mfu_attention == "full"  # PaLM's convention, which pretrax cites
    with pytest.raises(ConfigError, match="'train.mfu_attention' must be one of 'full', 'causal', got 'half'"):
        config_lib.load(None, ["train.mfu_attention=half"])


def abstract_params(path, vocab):
    """The model's parameter shapes (nothing allocated), built once for the counts under both conventions."""
    cfg = config_lib.load(path)
    return nnx.state(nnx.eval_shape(lambda: build_model(cfg, vocab, 0)), nnx.Param)


def test_gpt1_step_flops_by_hand():
    params = abstract_params("configs/gpt1.yaml", 40478)
    B, T, L, N, H, D = 64, 512, 12, 12, 64, 768
    # 116,534,784 published parameters; the 512 x 768 learned position table is a
    # lookup; the tied 40,478 x 768 embedding is the output matmul, so it counts
    matmul_params = 116_534_784 - 512 * D
    matmul = 6 * matmul_params * B * T
    for convention, share in (("full", 1.0), ("causal", 0.5)):
        cfg = config_lib.load("configs/gpt1.yaml", [f"train.mfu_attention={convention}"])
        # per layer, per (query, key) pair: q.k and probs.v, 2 FLOPs per multiply-add,
        # x3 for forward + backward; T^2 pairs per row in full, T^2 / 2 counted causal
        attention = L * 3 * (2 + 2) * N * H * B * T * T * share
        got = step_flops(cfg, 40478, params)
        assert got.matmul == matmul
        assert got.attention == attention
        assert got.tokens == B * T
        assert got.total == matmul + attention
        # the per-token helper is the same count: 6N + 12·L·N·H·T (PaLM), attention halved under causal
        assert flops_per_token(116_534_784, cfg.model, 40478, T, 512, convention) == pytest.approx(
            got.per_token, rel=1e-12)
        assert got.per_token == 6 * matmul_params + 12 * share * L * N * H * T


@pytest.mark.slow
def test_t5_1_1_base_step_flops_by_hand():
    params = abstract_params("configs/t5_1_1_base.yaml", 32128)
    B, S, T, L, D, F, V, N, H = 16, 512, 114, 12, 768, 2048, 32128, 12, 64
    enc_layer = 4 * D * D + 3 * D * F + 2 * D  # q, k, v, o; gated MLP (3 matrices); 2 norms
    cross_kv = 2 * D * D  # cross-attention keys and values: they project the encoder's output
    dec_layer_rest = 6 * D * D + 3 * D * F + 3 * D  # self q, k, v, o; cross q, o; MLP; 3 norms
    sees_inputs = L * enc_layer + D + L * cross_kv  # + the encoder's final norm
    sees_targets = L * dec_layer_rest + D + V * D  # + the decoder's final norm, the untied output layer
    lookups = V * D + 2 * 32 * N  # shared input embedding, the two relative-bias tables
    assert sees_inputs + sees_targets + lookups == 247_577_856  # every parameter is accounted for once
    matmul = 6 * B * (sees_inputs * S + sees_targets * T)
    pair = 3 * 4 * N * H  # training FLOPs per (query, key) pair per layer
    for convention, causal in (("full", 1.0), ("causal", 0.5)):  # only the decoder's self-attention is causal
        cfg = config_lib.load("configs/t5_1_1_base.yaml", [f"train.mfu_attention={convention}"])
        attention = pair * B * (L * S * S + L * T * T * causal + L * T * S)  # encoder, decoder self, cross
        got = step_flops(cfg, V, params)
        assert got.matmul == matmul
        assert got.attention == attention
        assert got.tokens == B * T  # the tokens trained on: the decoder's


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_layout_choices_that_do_not_change_the_arithmetic_do_not_change_the_count(kind):
    base = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "data.seq_len=16"]
    if kind == "encoder_decoder":
        base += ["model.kind=encoder_decoder", "model.positions=relative", "data.inputs_len=24", "data.targets_len=8"]
    ref = step_flops(config_lib.load(None, base), 256)
    assert step_flops(config_lib.load(None, base + ["model.scan_layers=true"]), 256) == ref
    # tied: the table is the output matmul; untied: a lookup plus an output layer of the same size
    untied = config_lib.load(None, base + ["model.tie_embeddings=false"])
    assert count_params(untied.model, 256, 16) == count_params(config_lib.load(None, base).model, 256, 16) + 256 * 32
    assert step_flops(untied, 256) == ref


def test_encoder_decoder_counts_grow_with_the_side_they_belong_to():
    base = ["model.kind=encoder_decoder", "model.positions=relative", "model.d_model=32", "model.n_layers=2",
            "model.n_encoder_layers=3", "model.n_heads=4", "model.d_ff=64", "train.batch_size=2"]
    a = step_flops(config_lib.load(None, base + ["data.inputs_len=10", "data.targets_len=6"]), 256)
    b = step_flops(config_lib.load(None, base + ["data.inputs_len=20", "data.targets_len=6"]), 256)
    # 10 more encoder tokens per row: encoder weights and cross-attention k/v (2 layers) see them
    enc_weights = 3 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32 + 2 * 2 * 32 * 32
    assert b.matmul - a.matmul == 6 * 2 * 10 * enc_weights
    pair = 12 * 4 * 8
    assert b.attention - a.attention == pair * 2 * (3 * (20**2 - 10**2) + 2 * 6 * (20 - 10))

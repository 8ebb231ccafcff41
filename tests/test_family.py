"""Model families: what each answers for its kind, checked by hand on small configs."""

import pytest

from pretrax.config import load
from pretrax.models.family import FAMILIES, EncoderDecoderFamily, Family, family_of

DEC = load(None, ["data.seq_len=32"])
ENC_DEC = load(None, ["model.kind=encoder_decoder", "model.positions=relative", "data.objective=span_corruption",
                      "data.seq_len=48", "data.targets_len=16", "model.n_layers=2", "model.n_encoder_layers=3"])


def test_each_kind_has_its_family():
    assert set(FAMILIES) == {"decoder", "encoder_decoder"}  # every model.kind the schema allows
    assert type(family_of(DEC.model)) is Family and type(family_of(ENC_DEC.model)) is EncoderDecoderFamily


def test_lengths_of_each_row_side():
    dec, enc_dec = family_of(DEC.model), family_of(ENC_DEC.model)
    assert dec.row_lengths(DEC.data) == (0, 32) and not dec.has_encoder
    assert enc_dec.row_lengths(ENC_DEC.data) == (48, 16) and enc_dec.has_encoder  # inputs_len 0 -> seq_len
    assert enc_dec.feature_length("encoder_segment_ids", ENC_DEC.data) == 48
    assert enc_dec.feature_length("targets", ENC_DEC.data) == 16
    assert enc_dec.attention_lengths(ENC_DEC.data) == (16, 48)  # decoder queries, encoder keys
    assert dec.attention_lengths(DEC.data) == (32, 32)


def test_depths_and_batch_keys():
    assert family_of(ENC_DEC.model).encoder_layers(ENC_DEC.model) == 3
    assert family_of(ENC_DEC.model).depth_keys(ENC_DEC.model) == {"model.n_layers": 2, "model.n_encoder_layers": 3}
    assert family_of(DEC.model).depth_keys(DEC.model) == {"model.n_layers": DEC.model.n_layers}
    assert "bidirectional" in family_of(DEC.model).batch_keys
    assert {"encoder_inputs", "encoder_segment_ids", "encoder_positions"} <= set(family_of(ENC_DEC.model).batch_keys)


class _Groups:
    def __init__(self, encoder, decoder):
        self.sides = {"encoder": encoder, "decoder": decoder}

    def size(self, side, active=False):
        return self.sides[side]


@pytest.mark.parametrize("causal", [1.0, 0.5])
def test_step_flops_by_hand(causal):
    B, S, T, pair = 4, 48, 16, 12.0 * 8 * 64
    m = ENC_DEC.model  # 3 encoder layers, 2 decoder layers
    matmul, attention = family_of(m).step_flops(_Groups(1000, 2000), m, B, S, T, pair, causal)
    assert matmul == 6 * B * (1000 * S + 2000 * T)
    assert attention == B * pair * (3 * S * S + 2 * (T * T * causal + T * S))
    matmul, attention = family_of(DEC.model).step_flops(_Groups(0, 2000), DEC.model, B, 0, 32, pair, causal)
    assert (matmul, attention) == (6 * 2000 * B * 32, pair * DEC.model.n_layers * B * 32 * 32 * causal)

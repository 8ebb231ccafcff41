"""`pretrax data stats`: per-denoiser statistics measured on real packed batches (pretrax.data.stats)."""

import json
import math

import pytest

from pretrax import config
from pretrax.data.objectives import decoder_raw_length, span_counts
from pretrax.data.stats import collect_stats, format_stats

N = 2000


@pytest.fixture(scope="module")
def ul2r():
    cfg = config.load("configs/ul2r_tiny_decoder.yaml")
    return cfg, collect_stats(cfg, N)


def test_counts_and_shares_match_configured_weights(ul2r):
    cfg, stats = ul2r
    per = stats["denoisers"]
    assert stats["examples"] == N
    assert list(per) == ["0", "1", "2", "3"]
    assert [per[k]["name"] for k in per] == ["S", "R", "X", "X"]
    assert sum(e["measured"]["count"] for e in per.values()) == N
    for d, e in zip(cfg.data.denoisers, per.values()):
        p = e["configured"]["share"]
        assert p == pytest.approx(d.weight / sum(x.weight for x in cfg.data.denoisers))
        # each example's denoiser is an independent draw with probability p: binomial, 4 standard deviations
        assert abs(e["measured"]["share"] - p) <= 4 * math.sqrt(p * (1 - p) / N), e


def test_span_noise_density_and_mean_span(ul2r):
    cfg, stats = ul2r
    for d, e in zip(cfg.data.denoisers, stats["denoisers"].values()):
        if d.kind != "span":
            continue
        m = e["measured"]
        # exactly what the objective's count rule gives for the raw lengths measured in the batches:
        # the measurement (sentinels, eos, mode token) reads back what the objective built
        assert m["noise_density"] == pytest.approx(m["expected_noise_density"], abs=1e-12)
        assert m["mean_span"] == pytest.approx(m["expected_mean_span"], abs=1e-12)
        # documents are concatenated, then cut (data.concat_documents, the default): every example is a full
        # segment of the denoiser's raw length, whatever the documents' lengths
        assert m["full_length_share"] == 1 and m["mean_raw_length"] == e["configured"]["raw_length"], e
        # vs the configured values: a full segment rounds num_noise to an integer (<= 0.5 / L off, L >= 191
        # here); token-weighted, that stays well inside 0.01
        assert abs(m["noise_density"] - d.noise_density) <= 0.01, e
        # mean span: num_spans = round(noise / mu), so with s spans per full segment the mean span is off by up
        # to mu / (2 s) (X(32, 0.15) at seq_len 256: one span of round(0.15 * 253) = 38 tokens, not 32); full
        # segments only, so it is exactly the count rule's value at the raw length
        raw = decoder_raw_length(d, cfg.data.seq_len)
        n_full, s_full = span_counts(raw, d.noise_density, d.mean_span)
        assert abs(m["mean_span"] - d.mean_span) <= d.mean_span / (2 * s_full), e
        assert m["mean_span"] == pytest.approx(n_full / s_full, abs=1e-12)
        assert m["spans"] >= m["count"]  # at least one span (one sentinel in the inputs) per example


def test_s_target_share_is_half(ul2r):
    _, stats = ul2r
    s = stats["denoisers"]["0"]
    m = s["measured"]
    assert s["configured"]["kind"] == "prefix" and s["configured"]["expected_target_share"] == 0.5
    # uniform split point: the per-example target share is ~U(0, 1), std 0.29 / sqrt(~1000 examples) ~ 0.009
    assert abs(m["noise_density"] - 0.5) < 0.04
    assert abs(m["noise_density_per_example"] - 0.5) < 0.04
    assert m["mean_span"] is None


def test_lengths_and_padding(ul2r):
    cfg, stats = ul2r
    assert 0 <= stats["padding_fraction"] < 1
    for e in stats["denoisers"].values():
        m = e["measured"]
        # an example holds mode + inputs + targets - 1 tokens (next-token pairs), all within seq_len
        assert m["mean_input_length"] + m["mean_target_length"] - 1 == pytest.approx(m["mean_example_length"])
        assert 0 < m["mean_example_length"] <= cfg.data.seq_len


def test_json_round_trip_and_table(ul2r):
    _, stats = ul2r
    assert json.loads(json.dumps(stats)) == stats
    table = format_stats(stats)
    lines = table.splitlines()
    rows = [line for line in lines if line[:2] in ("0 ", "1 ", "2 ", "3 ")]
    assert [r.split()[1] for r in rows] == ["S", "R", "X", "X"]  # config order
    assert "mu=32, r=0.15" in rows[2]
    assert "padding fraction" in table


def test_span_corruption_without_mode_token():
    cfg = config.load(None, ["data.objective=span_corruption", "data.seq_len=128", "train.batch_size=4"])
    stats = collect_stats(cfg, 200)
    m = stats["denoisers"]["0"]["measured"]
    assert stats["examples"] == 200 and m["count"] == 200
    assert m["noise_density"] == pytest.approx(m["expected_noise_density"], abs=1e-12)
    assert m["mean_span"] == pytest.approx(m["expected_mean_span"], abs=1e-12)
    assert abs(m["noise_density"] - 0.15) <= 0.02


def test_causal_lm_has_no_denoisers():
    cfg = config.load(None, ["data.seq_len=64", "train.batch_size=4"])
    stats = collect_stats(cfg, 50)
    assert stats["objective"] == "causal_lm" and stats["examples"] == 50
    assert list(stats["denoisers"]) == ["0"] and stats["denoisers"]["0"]["name"] == "causal"
    assert 0 <= stats["padding_fraction"] < 1
    m = stats["denoisers"]["0"]["measured"]
    assert m["count"] == 50 and 0 < m["mean_example_length"] <= 64
    assert m["mean_input_length"] == m["mean_example_length"]  # no prefix: every token is an input
    assert json.loads(json.dumps(stats)) == stats
    table = format_stats(stats)
    assert "no denoisers" in table and "padding fraction" in table


def test_encoder_decoder_stats_read_back_what_the_objective_built():
    cfg = config.load("configs/ul2_tiny_encdec.yaml")
    stats = collect_stats(cfg, 300)
    assert (stats["inputs_len"], stats["targets_len"]) == (384, 192) and 0 <= stats["encoder_padding_fraction"] < 1
    assert [e["name"] for e in stats["denoisers"].values()] == ["R", "R", "S", "X", "X", "X", "X"]
    for e in stats["denoisers"].values():
        m = e["measured"]
        assert m["count"] > 0 and m["mean_input_length"] <= 384 - 1 and m["mean_target_length"] <= 192
        if e["configured"]["kind"] == "span":  # sentinels, mode token and eos are read back exactly
            assert m["noise_density"] == pytest.approx(m["expected_noise_density"], abs=1e-12)
            assert m["mean_span"] == pytest.approx(m["expected_mean_span"], abs=1e-12)
    assert "encoder rows" in format_stats(stats)

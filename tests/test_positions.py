"""ALiBi (Press et al. 2022) and xPos (Sun et al. 2022) against numpy transcriptions of the papers' formulas,
and the configurations that cannot hold them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax import config as config_lib
from pretrax.errors import ConfigError
from pretrax.models.positions import XPOS_GAMMA, alibi_bias, alibi_slopes, rotate_qk, xpos_angles


def paper_slopes(n):
    """ofirpress/attention_with_linear_biases, get_slopes, in numpy."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 4, 8, 12, 16, 20, 32])
def test_alibi_slopes_are_the_papers(n):
    np.testing.assert_allclose(np.asarray(alibi_slopes(n)), paper_slopes(n), rtol=1e-6)
    if n == 8:
        np.testing.assert_allclose(np.asarray(alibi_slopes(8)), [2.0**-k for k in range(1, 9)], rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
    q = np.array([[0, 1, 2, 0, 1]], np.int32)  # two packed documents: positions restart
    k = q
    bias = np.asarray(alibi_bias(jnp.asarray(q), jnp.asarray(k), alibi_slopes(4)))
    assert bias.shape == (1, 4, 5, 5)
    slopes = paper_slopes(4)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                assert bias[0, h, i, j] == pytest.approx(-slopes[h] * abs(q[0, i] - k[0, j]), rel=1e-6)


def test_xpos_scores_decay_with_distance_as_the_paper_writes():
    """q_n . k_m after xPos = sum over pairs i of zeta_i^((n - m) / B) x (the RoPE-rotated pair's dot)."""
    H, B, theta = 16, 512.0, 10000.0
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=H), rng.normal(size=H)
    for n, m in [(5, 3), (700, 12), (3000, 2999), (40, 40)]:
        pos = jnp.asarray([[n, m]], jnp.int32)
        angles = xpos_angles(pos, H, theta, B)
        x = jnp.asarray(np.stack([q, k])[None, :, None, :], jnp.float32)  # (1, 2, 1, H)
        qn, _ = rotate_qk(x[:, :1], x[:, :1], tuple(a[:, :1] for a in angles))
        _, km = rotate_qk(x[:, 1:], x[:, 1:], tuple(a[:, 1:] for a in angles))
        got = float(jnp.sum(qn[0, 0, 0] * km[0, 0, 0]))
        want = 0.0
        for i in range(H // 2):
            freq = theta ** (-2 * i / H)
            zeta = (2 * i / H + XPOS_GAMMA) / (1 + XPOS_GAMMA)
            a, b = n * freq, m * freq
            qa = np.array([q[i] * np.cos(a) - q[i + H // 2] * np.sin(a), q[i + H // 2] * np.cos(a) + q[i] * np.sin(a)])
            kb = np.array([k[i] * np.cos(b) - k[i + H // 2] * np.sin(b), k[i + H // 2] * np.cos(b) + k[i] * np.sin(b)])
            want += zeta ** ((n - m) / B) * float(qa @ kb)
        assert got == pytest.approx(want, rel=2e-4, abs=1e-5), (n, m)


@pytest.mark.parametrize("overrides,words", [
    (["model.kind=encoder_decoder", "model.positions=xpos"],
     "model.positions='xpos' does not fit model.kind='encoder_decoder'"),
    (["model.positions=relative"], "model.positions='relative' does not fit model.kind='decoder'"),
    (["model.positions=xpos", "model.xpos_scale_base=0"], "'model.xpos_scale_base' must be > 0"),
    (["model.positions=xpos", "model.d_model=36", "model.n_heads=4"], "rotary positions need an even head size"),
])
def test_positions_a_model_cannot_hold_are_one_line(overrides, words):
    with pytest.raises(ConfigError) as e:
        config_lib.load(None, overrides)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_splash_refuses_the_alibi_bias():
    from pretrax.train.state import check_attention

    cfg = config_lib.load(None, ["model.positions=alibi", "model.attention=splash"])
    with pytest.raises(ConfigError, match="cannot add"):
        check_attention(cfg, "tpu")

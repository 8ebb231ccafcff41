"""Sampling filters: temperature, top-k and top-p keep exactly the tokens they should."""

import jax
import jax.numpy as jnp
import numpy as np

from pretrax.generate import filter_logits


def kept(logits):
    return set(np.flatnonzero(np.isfinite(np.asarray(logits))).tolist())


def test_top_k_keeps_the_k_largest():
    logits = jnp.array([0.1, 3.0, -1.0, 2.0, 0.5])
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == {1, 3}
    assert kept(filter_logits(logits, 1.0, 0, 1.0)) == {0, 1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))
    assert kept(filter_logits(logits, 1.0, 0, 0.5)) == {0}  # 0.5 alone reaches p
    assert kept(filter_logits(logits, 1.0, 0, 0.75)) == {0, 1}
    assert kept(filter_logits(logits, 1.0, 0, 0.9)) == {0, 1, 2}


def test_temperature_sharpens():
    logits = jnp.array([1.0, 2.0])
    cold = jax.nn.softmax(filter_logits(logits, 0.1, 0, 1.0))
    warm = jax.nn.softmax(filter_logits(logits, 1.0, 0, 1.0))
    assert cold[1] > warm[1] > 0.5

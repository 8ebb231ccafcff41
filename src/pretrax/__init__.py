"""pretrax: a JAX/Flax NNX stack for pretraining language models.

Axis legend used in einsum strings, logical axis names and docs alike:
  B batch, T/S length, D model (embed), N heads, K kv heads, H head dim,
  F feed-forward (mlp), V vocab, L layers.
"""

__version__ = "0.1.0"

"""Optimizer, train state, the jitted step, the loop, checkpoints and metrics."""

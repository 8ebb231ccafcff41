"""Sweeps: a grid of configs (grid.py), run one after another with resume (runner.py), or as pod jobs (jobs.py)."""

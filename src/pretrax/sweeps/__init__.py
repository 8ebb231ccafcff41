"""Sweeps: a grid of configs (grid.py), run one after another in one process (runner.py), or shared by any
number of workers on many machines (worker.py, through claims.py and identity.py), into one results table
(results.py)."""

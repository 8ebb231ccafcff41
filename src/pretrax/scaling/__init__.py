"""Scaling laws: read a sweep's results.csv, fit L(N, D) (Chinchilla approach 3), isoFLOP minima (approach 2), plot."""

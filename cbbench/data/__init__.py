"""Datasets: specs, loaders and the embedded default."""

"""Shared test helpers: data directories in real formats, Ray head nodes, sweeps and their tables."""

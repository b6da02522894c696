"""Benchmarks of the AlignMixup trainer (run from the repository root: python -m benchmarks.NAME)."""

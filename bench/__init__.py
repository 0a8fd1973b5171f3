"""Benchmarks, not tests: each script prints figures (see README, Performance)."""

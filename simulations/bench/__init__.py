"""Benchmarks: scripts that print numbers (never timed unit tests)."""

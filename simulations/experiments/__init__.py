"""Experiments on finished or planned runs: ε sweeps, membership-inference audits, non-private upper bounds."""

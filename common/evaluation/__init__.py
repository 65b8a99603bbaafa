"""Scoring: ranking metrics, held-out evaluation, fidelity, membership-inference audit and the run report."""

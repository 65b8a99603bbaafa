"""Malicious silos (simulated attacks) and the robust aggregation rules that bound them.

Modules:

- ``attacks``: simulation only: ``AttackConfig``, target items, fake users, inflated counts, tampered updates,
  and how their effect is measured;
- ``rules``: ``RobustConfig`` and the robust rules for model updates (norm-bound, median, trimmed-mean, krum,
  multikrum, bulyan) and for DP releases (``robust_total``).
"""

"""Scoring: ranking metrics, held-out evaluation, fidelity, membership-inference audit and the run report.

Modules:

- ``metrics``: ``RankingMetrics``, batched Recall / NDCG / HitRate / coverage@K with fold-in items masked,
  as sums that merge across batches and clients;
- ``scoring``: a recommender scored on held-out users, batch by batch;
- ``fidelity``: how close synthetic users are to the real training users (simulation only);
- ``membership_audit``: the membership-inference attacks, AUC and TPR@FPR with bootstrap intervals, and the
  (ε, δ) ceiling they are checked against;
- ``report``: a run's ``report.md`` and its PNG plots.
"""

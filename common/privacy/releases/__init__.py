"""The one-shot DP releases of a node's users: statistics, co-occurrence, and the clipped sums under them.

Modules:

- ``clipped_sums``: per-user clipped counts and Gram matrices over binary CSR rows, and their noisy versions;
- ``statistics``: DP item counts and a history-length histogram (one Gaussian release), the popularity
  prior and the length sampler;
- ``cooccurrence``: the second-order release Σ x_M x_Mᵀ/ℓ over M chosen items (sensitivity 1), and the rule
  that asks for it only above its noise (``second_order_pays``).
"""

"""Synthetic users from the global models: the marginal fit before the rounds and the sampling after.

Modules:

- ``marginal_fit``: the server's GEM-style fit of the generator and the VAE decoder to the DP item counts and
  co-occurrence (post-processing, no ε);
- ``sampling``: synthetic users: item distributions from the decoder or generator, lengths from the DP
  histogram, items drawn without replacement (Gumbel-top-k).
"""

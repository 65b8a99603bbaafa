"""Secure aggregation (SecAgg, Bonawitz et al. CCS 2017) of integer vectors modulo 2^b.

Modules:

- ``crypto``: X25519 + HKDF key agreement, ChaCha20 mask expansion, the ChaCha20-Poly1305 share channel, Shamir;
- ``protocol``: SecAgg as pure, Flower-agnostic client and server steps (keys → shares → masked input →
  unmask), SecAgg+'s sparse ring graph, and an in-process harness;
- ``signing``: signed mode against an active server: SecAgg keys signed with the nodes' registered keys,
  checked against the operator's list, and the consistency round over the survivors;
- ``skellam``: the distributed Skellam mechanism (Agarwal, Kairouz, Liu 2021): rounding, RDP bound,
  calibration against the Gaussian plan, bit width;
- ``updates``: a local round's model update in fixed point, whose sum gives the users-weighted FedAvg.
"""

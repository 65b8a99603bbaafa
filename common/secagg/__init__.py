"""Secure aggregation (SecAgg, Bonawitz et al. CCS 2017) of integer vectors modulo 2^b."""

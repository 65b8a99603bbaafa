"""Malicious silos (simulated attacks) and the robust aggregation rules that bound them."""

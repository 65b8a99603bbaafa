"""Synthetic users from the global models: the marginal fit before the rounds and the sampling after."""

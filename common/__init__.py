"""Shared logic of fedsynth: data, models, privacy, recommenders and metrics.

The Flower apps in ``server/`` and ``client/`` stay thin and call into here.
"""

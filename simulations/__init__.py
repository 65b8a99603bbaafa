"""The ``fedsynth`` command line and the jobs it runs (baselines, data preparation, later the federation)."""

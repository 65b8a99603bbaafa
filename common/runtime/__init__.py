"""The process around the maths: torch device, OpenMP spin, Flower object pulls, atomic files, seeds.

Modules:

- ``device``: the run's ``device`` (``cpu``, ``cuda``, ``cuda:N``), refused before anything starts when
  torch cannot see it;
- ``openmp``: a short OpenMP idle spin in every process fedsynth starts, so DP-SGD's noise threads get the cores;
- ``object_pulls``: Flower's object pulls retried after 0.05 s instead of 1 s, 2 s, 4 s …;
- ``files``: atomic writes (temporary file, fsync, rename) of text, JSON and CSV, and ``to_plain`` for JSON;
- ``seeding``: independent random streams per purpose (``rng_for``, ``seed_for``) and each DP mechanism's own
  seed (``mechanism_seed``: OS entropy unless a simulation asks for reproducible noise).
"""

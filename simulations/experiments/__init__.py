"""Experiments on finished or planned runs: ε sweeps, membership-inference audits, non-private upper bounds.

Modules:

- ``sweep``: ``fedsynth sweep``: cells (ε × seed × grid), resume rules, one run + audit + accountant check per cell;
- ``sweep_results``: the tidy ``results.csv`` / ``.parquet`` and ``summary.csv`` (mean, 95% t-interval);
- ``sweep_report``: the sweep's ``report.md`` and self-contained ``report.html``;
- ``audit``: ``fedsynth audit --run DIR``: membership-inference audit of a finished run → ``audit.json``;
- ``mechanism_audit``: ``fedsynth audit --canaries M``: the white-box one-run audit of each DP release;
- ``upper_bounds``: ``fedsynth baseline``: the central recommenders on real training users, scored on real
  test users.
"""

"""Differential privacy: accounting (pure maths over events), calibration, and the durable ledger.

Subpackages:

- ``releases/``: the one-shot DP releases of a node's users (statistics, co-occurrence);
- ``dpsgd/``: DP-SGD on the node's users (Opacus parts, one-pass clipping, parallel noise, FedSGD steps).

Modules:

- ``accounting``: ``DPEvent`` and ``epsilon`` over a whole history (dp-accounting's PLD; RDP when it holds
  Skellam events), and ``calibrate_noise``;
- ``plan``: ``PrivacyPlan`` and ``plan_privacy``: every release's and model's noise, calibrated once per client;
- ``ledger``: ``PrivacyLedger``, a silo's durable record of every event spent and its lifetime cap:
  check before a release, record after, written atomically;
- ``subsampling``: the RDP of a Poisson-subsampled mechanism at integer orders (Zhu & Wang 2019);
- ``crosscheck``: the ledger's events through Google's dp-accounting, reported next to Opacus' ε;
- ``one_run_audit``: the one-run audit's bound (Steinke, Nasr, Jagielski 2023): ε lower bound from canary guesses.
"""

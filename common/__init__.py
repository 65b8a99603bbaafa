"""Shared logic of fedsynth: everything both sides of the wire use (``fedsynth.common``).

The Flower apps in ``server/`` and ``client/`` stay thin and call into here. Grouped by concept:

- ``config/``: the validated, frozen settings of the data, the split, the partition and the run;
- ``runtime/``: the process around the maths (device, OpenMP, Flower object pulls, atomic files, seeds);
- ``data/``: sources → interaction table → CSR matrix → strong-generalization split → client partitions;
- ``models/``: the Mult-VAE, the GAN, the bundle of both that crosses the wire, the optimizer;
- ``synthesis/``: the fit to the DP marginals before the rounds, and the sampling of synthetic users after;
- ``privacy/``: accounting, the privacy plan, the node's ledger, the one-shot DP releases, DP-SGD;
- ``secagg/``: secure aggregation with distributed Skellam noise;
- ``recommenders/``: the central recommenders behind one interface, and the simple DP baselines;
- ``evaluation/``: ranking metrics, scoring, fidelity, the membership audit, the run report;
- ``robustness/``: simulated malicious silos and the robust aggregation rules;
- ``federated/``: the wire names and typed messages, the strategies, the round log.

Modules:

- ``errors``: the domain errors (``FedsynthError`` and its kinds), each naming what was wrong and what to do.
"""

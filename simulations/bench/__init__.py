"""Benchmarks: scripts that print numbers (never timed unit tests); run as ``python -m fedsynth.simulations.bench.X``.

Modules:

- ``utility``: fedsynth's rows against the simple DP baselines, per dataset and ε, over seeds (via sweeps);
- ``scale``: utility against users per client on the generated data;
- ``levers``: an in-process federation scored on validation users: the tool for choosing settings;
- ``marginals``: synthesis fitted to the DP marginals, stage by stage, against the DP baselines;
- ``accounting``: the accountants side by side: noise needed and ε spent, RDP against PLD;
- ``dp_speed``: seconds per local epoch, DP-SGD against non-private;
- ``dp_evaluation``: what DP federated evaluation costs in utility and noise;
- ``secure_aggregation``: the cost of secure aggregation and what distributed noise buys;
- ``fedsgd``: ``round-mode = fedsgd`` against local rounds, in Flower simulations;
- ``attacks``: every attack × defence, utility and target promotion (simulation only);
- ``deployment``: one small run in simulation against a deployment on loopback;
- ``large``: a large run end to end with the memory of every process;
- ``first_run``: ``fedsynth run`` on the built-in data, wall seconds and where they go (target ≤ 45 s).
"""

"""The server's side (``fedsynth.server``): the ServerApp (``fedsynth.server.app:app``) and its stages.

Modules:

- ``app``: the ServerApp: reads the run config once, runs the federation, then the pipeline; a failure writes
  ``OUT/failed.json``;
- ``federation``: the stages before and during training: admission, DP statistics, co-occurrence, the fit to
  the DP marginals, the rounds, checkpoints, resume, ``train.json``;
- ``admission``: which nodes take part (refusals, failures, catalogue), the ``min-clients`` quorum, the run key;
- ``exchange``: ``send_and_receive``, push messages and poll for replies every 0.2 s at most;
- ``aggregation``: replies split into trained / refused / failed, FedAvg by users (or a robust rule), ε as the
  maximum over clients;
- ``secure_release``: the server's side of a secure sum: keys and shares (for one release or a batch of
  rounds), the masked stage, unmasking;
- ``secure_round``: a local round under secure aggregation: only the sum of the silos' updates is seen;
- ``fedsgd``: ``round-mode = fedsgd``: each round one secure-aggregated DP-SGD step of the Mult-VAE;
- ``pipeline``: after the rounds: synthesis, central recommenders, federated evaluation, fidelity,
  ``metrics.json`` and the report;
- ``evaluation``: federated evaluation: send a packed recommender, merge the clients' metric sums;
- ``baselines``: simulation only: DP popularity and DP-EASE from the clients' partitions, as comparison rows.
"""

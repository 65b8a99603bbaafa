"""The federated layer: wire names, typed messages, strategies (FedAvg, FedProx, FedAdam) and the round log.

Modules:

- ``wire``: the names of every record and metric that crosses the wire, and typed readers of record values;
- ``protocol``: the typed request and reply records of a round (``TrainRequest``, ``TrainReply``, ``Spent``,
  ``Refusal``), checked field by field;
- ``strategies``: ``StrategyConfig``; FedProx's proximal term (client side) and FedAdam's server step;
- ``round_log``: ``RoundLog`` / ``NodeProblem``, one release's or round's log (who answered, ε), as in train.json.
"""

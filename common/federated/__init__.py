"""The federated layer: wire names, strategies (FedAvg, FedProx, FedAdam) and the round log."""

"""Neural models shared by the central recommenders and the federated clients (one module per model)."""

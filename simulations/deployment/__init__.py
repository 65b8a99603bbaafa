"""Real deployments: TLS certificates, node keys, per-node data files, and a SuperLink + SuperNodes launcher."""

"""Real deployments: TLS certificates, node keys, per-node data files, and a SuperLink + SuperNodes launcher.

Modules:

- ``setup``: TLS certificates (a CA and the SuperLink's), ECDSA P-384 node keys, per-node data files and the
  catalogue;
- ``local``: ``LocalDeployment``: a SuperLink and N SuperNodes as real processes on this machine
  (``fedsynth deploy local``).
"""

"""The node's side (``fedsynth.client``): the ClientApp (``fedsynth.client.app:app``) and the node's steps.

Modules:

- ``app``: the ClientApp: each message handler checks the settings, loads the node's data and budget, then
  calls a handler;
- ``handlers``: the request handlers end to end: start check, DP statistics and co-occurrence releases, a
  train round (plain or as a masked update), a FedSGD step;
- ``round``: the node's step of a local round: replay or budget check, local DP-SGD, ledger record;
- ``training``: the local round's DP-SGD: the Mult-VAE, then the GAN's discriminator (the generator through it);
- ``budget``: ``NodeBudget``: the node's ledger directory, identity and own cap, and the saved reply of a
  charged round;
- ``data``: this node's users (its partition in simulation, its own file in a deployment) and the settings it
  refuses;
- ``evaluation``: federated evaluation on the node's held-out users: DP metric sums (charged) or exact ones;
- ``secure``: the node's side of a secure release or round: SecAgg stages, distributed Skellam noise;
- ``attack``: simulation only: what a malicious silo sends instead of the honest reply;
- ``warm_node``: ``fedsynth-node``: a SuperNode whose ClientApps are forked from a warm process;
- ``fast_supernode``: the SuperNode ``fedsynth-node`` starts, with Flower's idle polls shortened to 0.2 s.
"""

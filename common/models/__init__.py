"""Neural models shared by the central recommenders and the federated clients (one module per model).

Modules:

- ``vae``: ``MultVAE`` (Liang et al. 2018; no BatchNorm), ``vae_loss`` (the one loss) and the KL schedule ``kl_beta``;
- ``gan``: ``Generator`` (noise → item distribution), ``Discriminator`` and their two losses;
- ``bundle``: ``ModelBundle``, the four models as one prefixed state dict, the unit that crosses the wire;
- ``optim``: the fused Adam used by central and federated training.
"""

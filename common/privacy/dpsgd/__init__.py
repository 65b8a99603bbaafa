"""DP-SGD: Opacus training over CSR rows, one-pass linear clipping, parallel noise, FedSGD steps.

Modules:

- ``training``: ``PrivacyConfig``, ``CSRRows``, the Poisson loader and ``local_sgd`` / ``make_private`` built
  from Opacus' parts (sampler, noising optimizer, accountant hook, module validator);
- ``linear_clipping``: ``LinearClipper``, per-user clipping in one backward pass for models made of
  ``nn.Linear`` layers (book-keeping ghost clipping);
- ``noise``: the Gaussian noise drawn in place by one seeded generator per core and summed inside the
  clipping's products; an optimizer that refuses a step whose gradients are not this step's noised sum;
- ``fedsgd``: ``round-mode = fedsgd``: a silo's clipped gradient sum of a Poisson sample, its rounding for
  secure aggregation, and the server's step on the sum.
"""

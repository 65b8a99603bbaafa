"""Settings: the validated, frozen configuration of the data, split, partition, evaluation and the run.

Modules:

- ``sections``: the sections' frozen dataclasses (``DataConfig``, ``PreprocessConfig``, ``SplitConfig``,
  ``PartitionConfig``, ``EvalConfig``, …) and ``from_mapping``, which builds any of them from a dict and
  rejects unknown keys;
- ``run``: ``RunConfig``, the run's settings (``[tool.flwr.app.config]``) validated once, and the sub-configs
  it hands out (privacy, local training, data, partition, strategy, secure aggregation);
- ``settings``: every run setting declared once: name, type, default, help text and check;
- ``declare``: how a setting is declared (a dataclass field with its help and check), read back as ``Setting``;
- ``reference``: the settings written out: the ``[tool.flwr.app.config]`` block and docs/settings.md.
"""

"""Settings: the validated, frozen configuration of data, split, partition, evaluation and the run."""

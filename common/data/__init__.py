"""The data layer: sources → validated interaction table → CSR user × item matrix → split → partition.

docs/data.md explains the behaviour; docs/architecture.md draws the path.

Modules:

- ``table``: ``InteractionTable``, the validated (user, item, value, timestamp) table every loader returns;
- ``delimited``: delimited text and Parquet reading with line-numbered errors; bad rows stop or are counted;
- ``loaders``: MovieLens, Last.fm HetRec and generic CSV / Parquet loaders, and ``load_table`` that picks one;
- ``download``: MovieLens releases by name into a cache, size and sha256 verified before unpacking;
- ``generated``: the built-in dataset (the default): long tail, taste clusters, varied lengths, ML-100K sized;
- ``preprocess``: duplicates, implicit feedback, k-core, re-indexing → ``Interactions``, every effect counted;
- ``interactions``: ``Interactions``, the CSR user × item matrix with its id maps and user attributes;
- ``cleaning_report``: ``CleaningReport``, the counted record of every row removed or changed;
- ``split``: the strong-generalization split and the fold-in / target cut (seeded, or by keyed hash on a node);
- ``partition``: users spread over clients with flwr-datasets' partitioners; taste clusters by SVD + k-means;
- ``prepare``: ``prepare(DataSettings)``, load → preprocess → split in one call;
- ``node_file``: a deployed node's own data file, aligned to the shared public item catalogue, and its split.
"""

"""Images in, features out: everything between a user's files and the (N, D) embeddings every recipe reads.

- ``images``: safe decoding of an image a stranger hands in (formats, sizes, modes), with errors in words;
- ``datasets``: ``ImageDataset`` from a folder of class sub-folders or a CSV manifest (labels, concept
  labels, groups, part locations), validated row by row;
- ``features``: ``extract_features`` and ``FeatureSet``, the encoded dataset and its on-disk cache;
- ``store``: a sharded feature store for large datasets, written in-process or by Ray workers
  (``ray_extract``), read in blocks;
- ``sources``: the one interface (``FeatureSource``) a solver streams features through, in memory or from a store.
"""

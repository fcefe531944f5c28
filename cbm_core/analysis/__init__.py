"""How good a model is, and what an edit does to it.

- ``evaluation``: accuracy, worst-group accuracy, sparsity (NEC), confusion and co-occurrence warnings;
- ``edits``: global edits (prune a concept, set a weight, adapt to new data) as new models with a log entry;
- ``baselines``: random concept directions, a linear probe and zero-shot CLIP, which a CBM is read against;
- ``comparison``: recipes fitted on one feature cache and compared at matched sparsity.
"""

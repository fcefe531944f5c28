"""What every recipe produces and everything downstream reads: the concept bottleneck model itself.

- ``concepts``: ``ConceptBank``, the named concepts with their provenance, loaders and filters;
- ``concept_layer``: how an embedding becomes concept scores (text cosine, linear projection, SAE encoder);
- ``stats``: the training statistics scores are standardised and read against;
- ``model``: ``ConceptBottleneckModel`` (concept layer + statistics + sparse linear head) and its typed
  ``Explanation``;
- ``interventions``: immutable per-image changes to concept scores, with a JSON round trip;
- ``bundle``: save and load a model as a folder or zip (a versioned manifest and safetensors; never pickle).
"""

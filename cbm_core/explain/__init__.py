"""How far to believe an explanation (issue 13's trust signals), each module one question:

- ``reliability``: is the concept there (calibrated presence), is its map concentrated, is the image like
  the training data (OOD); the per-image summary the app, the CLI and the reports show;
- ``concept_metrics``: per concept, global importance, existence and location (pointing game, also
  against a user's own part annotations);
- ``audit``: does the model really use its concepts (bypass and leakage);
- ``paraphrase``: are the concept names robust to rewording;
- ``atlas``: what the model means by a concept, shown by the images that activate it most and least.
"""

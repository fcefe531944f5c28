"""Why a model predicts what it does for an image, and how far to believe it.

What the app shows for one image:
- ``pipeline``: image bytes -> cached encoding -> concept scores -> intervention -> head, the one data flow;
- ``saliency``: where each concept is seen (dense maps, Grad-CAM, LayerCAM, occlusion), one class per method;
- ``head_slice``: the head restricted to the classes and concepts on screen, for the live panel;
- ``counterfactual``: the smallest change of concepts that makes another class win;
- ``overlay``: a map drawn over its image;
- ``wording``: what an explanation means in words (directions, edits, labels from file names).

How far to believe it (issue 13's trust signals), each module one question:
- ``reliability``: is the concept there (calibrated presence), is its map concentrated, is the image like
  the training data (OOD); the per-image summary the app, the CLI and the reports show;
- ``concept_metrics``: per concept, global importance, existence and location (pointing game, also
  against a user's own part annotations);
- ``audit``: does the model really use its concepts (bypass and leakage);
- ``paraphrase``: are the concept names robust to rewording;
- ``atlas``: what the model means by a concept, shown by the images that activate it most and least.
"""

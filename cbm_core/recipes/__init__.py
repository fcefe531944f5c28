"""Recipes: estimators that turn cached embeddings into a ``ConceptBottleneckModel``."""
from .elastic_net import PathPoint, fit_elastic_net, regularization_path
from .pcbm import PCBM

RECIPES = {"pcbm": PCBM}

__all__ = ["PCBM", "RECIPES", "PathPoint", "fit_elastic_net", "regularization_path"]

"""Recipes: estimators that turn cached embeddings into a ``ConceptBottleneckModel``, behind one
protocol and registry (``base.py``). Importing this package registers every built-in recipe."""
from .base import NEEDS, RECIPES, Param, Recipe, RecipeInputs, get_recipe, list_recipes, register_recipe
from .elastic_net import PathPoint, fit_elastic_net, regularization_path
from .pcbm import PCBM
from .baselines import LinearProbe, RandomConcepts, ZeroShot
from .label_free import LabelFreeCBM
from .dn_cbm import DNCBM
from .labo import LaBo
from .sparse_cbm import SparseCBM
from .cms import CMS
from .supervised import SupervisedCBM

__all__ = ["NEEDS", "RECIPES", "Param", "Recipe", "RecipeInputs", "get_recipe", "list_recipes", "register_recipe",
           "PCBM", "LabelFreeCBM", "DNCBM", "LaBo", "SparseCBM", "CMS", "SupervisedCBM", "LinearProbe", "RandomConcepts", "ZeroShot", "PathPoint", "fit_elastic_net", "regularization_path"]

"""cbm_core: the engine of the concept-debugging dashboard (UI-agnostic; no streamlit here).

    from cbm_core import load_backbone, ConceptBank, ImageDataset, extract_features, PCBM
    backbone = load_backbone("ViT-B-32:openai")
    bank = ConceptBank.from_file("concepts.txt")
    data = ImageDataset.from_folder("photos/")
    feats = extract_features(backbone, data, progress_bar=True)
    model = PCBM(concepts=bank, concept_vectors=bank.embed(backbone), classes=data.classes,
                 backbone_spec=backbone.spec).fit(feats.embeddings, feats.labels).model_
    model.save("my_cbm")
"""
__version__ = "0.1.0"

from .backbone import Backbone, ImageEncoding, load_backbone, register_model_config
from .core.bundle import load_bundle, read_manifest, save_bundle
from .core.concepts import ConceptBank, FilterReport
from .explain.counterfactual import Counterfactual, counterfactual
from .data.datasets import ImageDataset, ImageRecord
from .data.features import FeatureSet, extract_features
from .data.store import FeatureStore, StoreError, write_store
from .data.sources import FeatureSource, MappedSource, TensorSource
from .analysis.edits import EditResult, adapt_concepts, prune_concepts, replay, set_weight
from .analysis.baselines import random_concept_baseline
from .analysis.evaluation import Metrics, compare, confusion_matrix, cooccurrence_warnings, evaluate
from .errors import (BackboneError, BundleError, CBMError, ConceptError, DatasetError, ImageError,
                     InterventionError, RecipeError, UntrustedBackboneError)
from .data.images import decode_image
from .explain.overlay import overlay
from .explain.wording import (DIRECTIONS, EditSummary, baseline_verdict, concept_directions, describe_edit,
                              direction, label_from_filename)
from .core.interventions import ConceptChange, Intervention
from .core.model import ConceptBottleneckModel, ConceptStats, Explanation
from .explain.head_slice import HeadSlice
from .explain.pipeline import EncodedImage, EncodingCache, Pipeline
from .recipes import PCBM, PathPoint, regularization_path
from .build import BuildResult, build_cbm
from .analysis.comparison import Comparison, compare_recipes
from .core.concept_layer import ConceptLayer, LinearProjection, SparseAutoencoderEncoder, TextCosine
from .recipes import Param, Recipe, RecipeInputs, get_recipe, list_recipes, register_recipe
from .explain.saliency import DenseConceptMaps, GradCAM, LayerCAM, Occlusion, SaliencyMaps, class_maps
from .recipes.supervised import SupervisedCBM
from .explain.tti import (InterventionCurve, Question, TTIError, answers_intervention, apply_answer,
                          intervention_curve, next_question)
from .core.propagation import ConceptDependencies, PropagationError, conditional_table, propagate
from .analysis.adaptation import AdaptationError, AdaptationProposal, propose_adaptation
from .report import Report, explanation_report, model_card

__all__ = [
    "Backbone", "ImageEncoding", "load_backbone", "register_model_config",
    "ConceptBank", "FilterReport",
    "ImageDataset", "ImageRecord", "FeatureSet", "extract_features",
    "FeatureStore", "StoreError", "write_store", "FeatureSource", "TensorSource", "MappedSource",
    "PCBM", "PathPoint", "regularization_path", "build_cbm", "BuildResult",
    "Recipe", "RecipeInputs", "Param", "get_recipe", "list_recipes", "register_recipe",
    "ConceptLayer", "TextCosine", "LinearProjection", "SparseAutoencoderEncoder",
    "compare_recipes", "Comparison",
    "DenseConceptMaps", "GradCAM", "LayerCAM", "Occlusion", "SaliencyMaps", "class_maps",
    "ConceptBottleneckModel", "ConceptStats", "Explanation",
    "Intervention", "ConceptChange", "HeadSlice", "Counterfactual", "counterfactual",
    "EditResult", "prune_concepts", "set_weight", "replay", "adapt_concepts",
    "SupervisedCBM", "Question", "InterventionCurve", "apply_answer", "answers_intervention", "next_question",
    "intervention_curve", "ConceptDependencies", "propagate", "conditional_table",
    "AdaptationProposal", "propose_adaptation",
    "Report", "explanation_report", "model_card",
    "Metrics", "evaluate", "compare", "confusion_matrix", "cooccurrence_warnings", "random_concept_baseline",
    "save_bundle", "load_bundle", "read_manifest",
    "Pipeline", "EncodedImage", "EncodingCache", "decode_image", "overlay",
    "DIRECTIONS", "concept_directions", "direction", "label_from_filename", "EditSummary", "describe_edit",
    "baseline_verdict",
    "CBMError", "ImageError", "ConceptError", "BackboneError", "DatasetError", "BundleError", "InterventionError",
    "RecipeError", "UntrustedBackboneError", "TTIError", "PropagationError", "AdaptationError",
]

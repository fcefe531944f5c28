"""Errors a user can act on.

Every error the engine raises on bad input is a ``CBMError``: its message says what was wrong,
with which file / concept / image, and what to do. The app shows the message as it is; the CLI
prints it without a traceback.
"""
from __future__ import annotations


class CBMError(Exception):
    """Base class for every user-facing error of cbm_core."""


class ImageError(CBMError):
    """An image could not be decoded safely (corrupt, empty, too large, unsupported)."""


class ConceptError(CBMError):
    """A concept list is unusable (empty, blank, duplicated or over-long entries)."""


class BackboneError(CBMError):
    """A backbone spec is unknown, or its weights cannot be found."""


class DatasetError(CBMError):
    """A dataset folder or manifest is unusable."""


class BundleError(CBMError):
    """A bundle is missing files, tampered with, unsafe, or from an unknown format version."""


class UntrustedBackboneError(BundleError):
    """A bundle names a backbone outside open_clip's published models (a local path, a hub repository);
    loading it needs the user's consent (``trust_backbone=True``, ``--trust-backbone``)."""


class InterventionError(CBMError):
    """An intervention names an unknown concept or an invalid value."""


class RecipeError(CBMError, ValueError):
    """A recipe's options or inputs are unusable, or its fit failed (e.g. produced non-finite numbers)."""


class SaliencyError(CBMError, ValueError):
    """A saliency method the model's image tower does not offer (e.g. ``layercam-fine`` on a ViT)."""

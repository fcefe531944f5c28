"""Shared fixtures: tiny open_clip towers registered at run time, so tests run offline on a CPU."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from cbm_core.backbone import load_backbone, register_model_config

TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": TINY_TEXT,
}
TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": TINY_TEXT,
}


@pytest.fixture(scope="session", autouse=True)
def tiny_configs():
    register_model_config("tiny-vit", TINY_VIT)
    register_model_config("tiny-rn", TINY_RN)


@pytest.fixture(scope="session")
def tiny_vit(tiny_configs):
    torch.manual_seed(0)
    return load_backbone("tiny-vit:random", device="cpu")


@pytest.fixture(scope="session")
def tiny_rn(tiny_configs):
    torch.manual_seed(0)
    return load_backbone("tiny-rn:random", device="cpu")


def make_model(residual: bool = False, seed: int = 0):
    """A hand-built CBM (K=4 concepts, C=3 classes, D=6) with known weights and stats."""
    from cbm_core.core.concept_layer import TextCosine
    from cbm_core.core.concepts import ConceptBank
    from cbm_core.core.model import ConceptBottleneckModel, ConceptStats

    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=1)
    train = torch.nn.functional.normalize(torch.randn(200, 6, generator=g), dim=1)
    names = ("red crown", "striped wing", "long tail", "water")
    stats = ConceptStats.from_scores(names, train @ vectors.T)
    weight = torch.tensor([[2.0, 0.0, -1.0, 3.0], [0.0, 1.5, 0.5, -2.0], [-1.0, 0.0, 2.5, 0.0]])
    return ConceptBottleneckModel(
        backbone_spec="tiny-vit:random", concepts=ConceptBank(names), concept_layer=TextCosine(vectors),
        classes=("cardinal", "jay", "gull"), stats=stats, weight=weight, bias=torch.tensor([0.1, -0.2, 0.3]),
        residual_weight=torch.randn(3, 6, generator=g) * 0.5 if residual else None,
        recipe={"name": "hand-built"}), train


@pytest.fixture
def hand_model():
    return make_model()


@pytest.fixture
def downloads(monkeypatch):
    """key -> (data, file_name, disabled) of every download button a page draws while the test runs (the report
    buttons' tests read them)."""
    from streamlit.delta_generator import DeltaGenerator

    seen: dict = {}
    original = DeltaGenerator.download_button

    def spy(self, label, data, *args, **kwargs):
        seen[kwargs.get("key")] = (data, kwargs.get("file_name"), kwargs.get("disabled", False))
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    return seen

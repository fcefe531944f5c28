"""build_cbm: the one build path behind the CLI and the Build page."""
import pytest

from cbm_core.build import build_cbm
from cbm_core.core.concepts import ConceptBank
from cbm_core.data.datasets import ImageDataset
from cbm_core.errors import DatasetError
from helpers import write_class_folder


def test_build_with_filters_progress_path_and_skipped_images(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folder(tmp_path / "data", per_class=8)
    (root / "red" / "bad.png").write_bytes(b"")
    bank = ConceptBank.from_list(["red", "blue", "green", "round shape", "red thing"])
    stages = []
    result = build_cbm(tiny_vit, ImageDataset.from_folder(root), bank, templates=["a photo of {}."], lam=1e-3,
                       dedupe=0.999, class_similarity=0.999, with_path=True,
                       progress=lambda stage, frac: stages.append((stage, frac)))
    removed = dict(result.removed_concepts.removed)
    assert removed["red"] == "is a class name" and removed["blue"] == "is a class name" and removed["green"] == "is a class name"
    assert result.model.concepts.names == ("round shape", "red thing")
    assert [p for p, _ in result.skipped_images][0].endswith("bad.png")
    assert result.model.metrics["n_train"] + result.model.metrics["n_val"] == 24
    assert result.path and result.path[0].nec == 0
    assert stages[-1] == ("done", 1.0) and any(s.startswith("encoding") for s, _ in stages)
    assert result.val_metrics.n == result.model.metrics["n_val"]


def test_validation_classes_must_match(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    train = ImageDataset.from_folder(write_class_folder(tmp_path / "a", per_class=2))
    other = tmp_path / "b"
    write_class_folder(other, per_class=2)
    (other / "blue").rename(other / "navy")
    with pytest.raises(DatasetError, match="differ"):
        build_cbm(tiny_vit, train, ConceptBank.from_list(["round"]), val=ImageDataset.from_folder(other))

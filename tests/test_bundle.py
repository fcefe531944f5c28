import json
import pickle
import zipfile

import pytest
import torch

from cbm_core.core.bundle import FORMAT_VERSION, load_bundle, read_manifest, save_bundle, _canonical, _sha
from cbm_core.analysis.edits import prune_concepts
from cbm_core.errors import BundleError
from conftest import make_model


def assert_same(a, b):
    for name in ("weight", "bias"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.concept_layer.kind == b.concept_layer.kind
    for name, t in a.concept_layer.tensors().items():
        assert torch.equal(t, b.concept_layer.tensors()[name]), name
    for name in ("mean", "std", "quantiles"):
        assert torch.equal(getattr(a.stats, name), getattr(b.stats, name)), name
    assert a.concepts == b.concepts and a.classes == b.classes and a.edit_log == b.edit_log
    assert a.recipe == b.recipe and a.backbone_spec == b.backbone_spec and a.templates == b.templates


@pytest.mark.parametrize("suffix", ["", ".zip"])
@pytest.mark.parametrize("residual", [False, True])
def test_round_trip_is_bit_exact(tmp_path, suffix, residual):
    model, _ = make_model(residual)
    model = prune_concepts(model, ["water"]).model
    path = save_bundle(model, tmp_path / f"b{suffix}")
    loaded = load_bundle(path)
    assert_same(model, loaded)
    assert (loaded.residual_weight is None) == (not residual)
    if residual:
        assert torch.equal(loaded.residual_weight, model.residual_weight)
    assert read_manifest(path)["edit_log"][0]["op"] == "prune"


def test_does_not_overwrite_silently(tmp_path, hand_model):
    model, _ = hand_model
    save_bundle(model, tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(model, tmp_path / "b")
    save_bundle(model, tmp_path / "b", overwrite=True)


def _saved(tmp_path, hand_model):
    return save_bundle(hand_model[0], tmp_path / "b")


def _rewrite_manifest(path, change, keep_checksum=False):
    m = json.loads((path / "manifest.json").read_text())
    integrity = m.pop("integrity")
    change(m)
    if not keep_checksum:
        integrity["manifest_sha256"] = _sha(_canonical(m))
    m["integrity"] = integrity
    (path / "manifest.json").write_text(json.dumps(m))


def test_tampered_manifest(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    _rewrite_manifest(path, lambda m: m["classes"].reverse(), keep_checksum=True)
    with pytest.raises(BundleError, match="changed after the bundle was saved"):
        load_bundle(path)


def test_tampered_tensors(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    data = bytearray((path / "tensors.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tensors.*do not match"):
        load_bundle(path)


def test_shape_mismatch(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    _rewrite_manifest(path, lambda m: m["tensors"]["weight"].update(shape=[3, 5]))
    with pytest.raises(BundleError, match="'weight'.*shape"):
        load_bundle(path)


def test_inconsistent_concept_count(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    _rewrite_manifest(path, lambda m: m["concepts"].pop())
    with pytest.raises(BundleError, match="inconsistent"):
        load_bundle(path)


@pytest.mark.parametrize("version, message", [(FORMAT_VERSION + 1, "newer"), (0, "no longer reads"), ("1", "version")])
def test_other_format_versions(tmp_path, hand_model, version, message):
    path = _saved(tmp_path, hand_model)
    _rewrite_manifest(path, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_a_bundle_with_a_pickle_is_refused_unopened(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    (path / "extra.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(BundleError, match="extra.pkl.*pickle.*not opened"):
        load_bundle(path)
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(path / "manifest.json", "manifest.json")
        zf.write(path / "tensors.safetensors", "tensors.safetensors")
        zf.writestr("model.pt", pickle.dumps([1]))
    with pytest.raises(BundleError, match="model.pt.*pickle"):
        load_bundle(zpath)


def test_strangers_and_missing_files(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    (path / "tensors.safetensors").unlink()
    with pytest.raises(BundleError, match="missing tensors.safetensors"):
        load_bundle(path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "something else"}')
    (other / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(BundleError, match="not a cbm_core bundle"):
        load_bundle(other)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(BundleError, match="neither a bundle folder nor a zip"):
        load_bundle(tmp_path / "x.zip")
    with pytest.raises(BundleError, match="No bundle"):
        load_bundle(tmp_path / "nothing")


def test_zip_of_a_folder_loads(tmp_path, hand_model):
    path = _saved(tmp_path, hand_model)
    zpath = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in path.iterdir():
            zf.write(f, f"b/{f.name}")
    assert_same(load_bundle(zpath), hand_model[0])


def test_no_pickle_anywhere_in_the_project():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = [str(p) for p in (root / "cbm_core").rglob("*.py")
                 if any(s in p.read_text() for s in ("import pickle", "torch.load(", "pickle.load"))]
    assert not offenders

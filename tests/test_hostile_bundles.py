"""Bundles from strangers: every hostile file here is written by the test, its checksums
recomputed (anyone can), and it must be refused with a BundleError that says why — or load into a
model that works. Nothing else may escape, and memory stays bounded while refusing."""
import json
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cbm_core import Pipeline, load_bundle, save_bundle
from cbm_core.core.bundle import _canonical, _sha
from cbm_core.errors import BundleError, CBMError, UntrustedBackboneError
from conftest import make_model


@pytest.fixture
def saved(tmp_path):
    return save_bundle(make_model()[0], tmp_path / "b")


def rewrite(path: Path, manifest_change=None, tensor_change=None, raw_manifest: bytes | None = None) -> Path:
    """Change a saved bundle folder and recompute both checksums, as an attacker would."""
    tensors = st_load((path / "tensors.safetensors").read_bytes())
    if tensor_change:
        out = tensor_change(tensors)
        tensors = out if isinstance(out, dict) else tensors
    data = st_save({k: v.contiguous() for k, v in tensors.items()})
    (path / "tensors.safetensors").write_bytes(data)
    m = json.loads((path / "manifest.json").read_text())
    del m["integrity"]
    if manifest_change:
        out = manifest_change(m)
        m = out if isinstance(out, dict) else m
    m["integrity"] = {"tensors_sha256": _sha(data), "manifest_sha256": _sha(_canonical(m))}
    (path / "manifest.json").write_bytes(raw_manifest if raw_manifest is not None else json.dumps(m).encode())
    return path


def refused(path, match):
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def setter(*keys, value):
    def change(m):
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


MANIFEST_CASES = {
    "concepts is a string": (setter("concepts", value="red crown"), "concepts must be a list"),
    "concept name is a number": (lambda m: m["concepts"][0].update(name=7), r"concepts\[0\].name must be a string"),
    "duplicate class": (setter("classes", value=["cardinal", "Cardinal", "gull"]), "twice"),
    "escape sequence in a name": (lambda m: m["concepts"][0].update(name="\x1b[31mred"), "control character U\\+001B"),
    "bidi override in a class": (setter("classes", value=["cardinal", "jay\u202egnp.exe", "gull"]), "U\\+202E"),
    "lone surrogate": (lambda m: m["concepts"][1].update(name="wing \ud800"), "surrogate"),
    "template with two holes": (setter("templates", value=["a {} and {}"]), "exactly one"),
    "template with a format field": (setter("templates", value=["a {0.__class__}"]), "exactly one"),
    "unknown top-level field": (setter("payload", value="x"), "unknown fields"),
    "int dtype declared": (lambda m: m["tensors"]["weight"].update(dtype="int64"), "dtype"),
    "backbone spec not a string": (setter("backbone", value={"spec": ["x"]}), "backbone.spec must be a string"),
    "recipe is a list": (setter("recipe", value=[1, 2]), "recipe must be an object"),
    "edit log entry without op": (setter("edit_log", value=[{"concepts": ["x"]}]), r"edit_log\[0\].op"),
    "deep metrics": (setter("metrics", value={"a": json.loads("[" * 40 + "]" * 40)}), "nested more than"),
    "version as text": (setter("format_version", value="2"), "whole number"),
    "one class only": (setter("classes", value=["only"]), "2 to"),
    "name similarity out of range": (lambda m: m["concepts"][0].update(name_similarity=7), "name_similarity"),
    "layer kind unknown": (setter("concept_layer", value={"kind": "pickle", "config": {}}), "concept_layer must be"),
    "huge shape declared": (lambda m: m["tensors"]["weight"].update(shape=[100_000, 100_000]), "shape|GB"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_field_attacks_are_refused(saved, case):
    change, match = MANIFEST_CASES[case]
    refused(rewrite(saved, change), match)


@pytest.mark.parametrize("raw, match", [
    (b'{"format": "cbm-bundle", "format_version": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not a cbm_core bundle"),
    (b'{"format": "cbm-bundle", "format_version": NaN}', "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'"just a string"', "not a cbm_core bundle"),
])
def test_malformed_json_is_refused_not_a_traceback(saved, raw, match):
    refused(rewrite(saved, raw_manifest=raw), match)


def _mul(name, value):
    def change(t):
        t[name] = t[name] * value
    return change


TENSOR_CASES = {
    "NaN weight": (lambda t: t["weight"].__setitem__((0, 0), float("nan")), "NaN or inf"),
    "inf bias": (lambda t: t["bias"].__setitem__(0, float("inf")), "NaN or inf"),
    "zero std": (lambda t: t["stats.std"].__setitem__(1, 0.0), "standard deviation"),
    "unsorted percentiles": (lambda t: t["stats.quantiles"].__setitem__((50, 0), 99.0), "increasing order"),
    "integer tensor": (lambda t: t.__setitem__("bias", torch.arange(3, dtype=torch.int32)), "floating-point|dtype"),
    "extra tensor": (lambda t: t.__setitem__("payload", torch.zeros(2)), "holds|declares"),
    "missing tensor": (lambda t: t.pop("stats.std"), "holds|declares"),
    "mean outside its range": (lambda t: t["stats.mean"].__setitem__(0, 1e6), "outside"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensor_attacks_are_refused(saved, case):
    change, match = TENSOR_CASES[case]

    def declare(m):  # keep the manifest's declaration in step, so only deep checks can catch it
        t = st_load((saved / "tensors.safetensors").read_bytes())
        m["tensors"] = {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in t.items()}
    path = rewrite(saved, tensor_change=change)
    if case != "extra tensor" and case != "missing tensor":
        rewrite(path, manifest_change=declare)
    refused(path, match)


def test_shapes_consistent_with_each_other_but_not_with_the_concepts(saved):
    def grow(t):
        t["weight"] = torch.cat([t["weight"], torch.zeros(3, 1)], dim=1)

    def declare(m):
        m["tensors"]["weight"]["shape"] = [3, 5]
    refused(rewrite(saved, declare, grow), "4 concepts and 3 classes need")


def test_half_precision_tensors_load_as_float32(saved):
    model = make_model()[0]
    path = rewrite(saved, lambda m: [meta.update(dtype="float16") for meta in m["tensors"].values()],
                   lambda t: {k: v.half() for k, v in t.items()})
    loaded = load_bundle(path)
    assert loaded.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.weight, model.weight, atol=1e-2, rtol=1e-2)


def test_a_damaged_safetensors_header_is_refused(saved):
    data = bytearray((saved / "tensors.safetensors").read_bytes())
    data[:8] = struct.pack("<Q", 2**40)
    (saved / "tensors.safetensors").write_bytes(bytes(data))
    m = json.loads((saved / "manifest.json").read_text())
    del m["integrity"]
    m["integrity"] = {"tensors_sha256": _sha(bytes(data)), "manifest_sha256": _sha(_canonical(m))}
    (saved / "manifest.json").write_text(json.dumps(m))
    refused(saved, "damaged header")


# -- files and archives ---------------------------------------------------------------------------
def test_manifest_that_is_a_folder(saved):
    (saved / "manifest.json").unlink()
    (saved / "manifest.json").mkdir()
    refused(saved, "is a folder")


@pytest.mark.parametrize("target", ["/dev/zero", "outside"])
def test_symlinked_files_are_refused(saved, tmp_path, target):
    (saved / "tensors.safetensors").unlink()
    if target == "outside":
        (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
        target = str(tmp_path / "elsewhere.safetensors")
    os.symlink(target, saved / "tensors.safetensors")
    refused(saved, "symbolic link")


def test_a_device_is_not_a_bundle():
    refused("/dev/zero", "neither a bundle folder nor a zip")


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_zip_with_duplicate_members_or_traversal(saved, tmp_path):
    files = [(n, (saved / n).read_bytes()) for n in ("manifest.json", "tensors.safetensors")]
    refused(_zip(tmp_path / "dup.zip", files + [files[0]]), "same file twice")
    refused(_zip(tmp_path / "up.zip", [("../" + n, d) for n, d in files]), "nested folders")


def test_zip_bomb_costs_little_memory_before_refusal(saved, tmp_path):
    """A tensor member that inflates to 300 MB (a few hundred KB on disk) is refused after reading
    no more than the manifest allows — the declared shapes bound what is read."""
    manifest = (saved / "manifest.json").read_bytes()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", manifest)
        with zf.open("tensors.safetensors", "w") as member:
            block = bytes(1 << 20)
            for _ in range(300):
                member.write(block)
    assert bomb.stat().st_size < 2 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="more than its manifest allows"):
            load_bundle(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_a_lying_zip_header_is_caught(saved, tmp_path):
    """Shrink the member's declared size in both zip headers: the inflated bytes no longer match it."""
    good = _zip(tmp_path / "good.zip", [(n, (saved / n).read_bytes()) for n in ("manifest.json", "tensors.safetensors")])
    data = bytearray(good.read_bytes())
    real = len((saved / "tensors.safetensors").read_bytes())
    fake = struct.pack("<I", 100)
    for start in range(len(data) - 4):
        if data[start:start + 4] == struct.pack("<I", real):
            data[start:start + 4] = fake
    bad = tmp_path / "lying.zip"
    bad.write_bytes(bytes(data))
    refused(bad, "damaged zip|checksum|truncated|tensors")


def test_a_corrupt_zip_member(saved, tmp_path):
    good = _zip(tmp_path / "good.zip", [(n, (saved / n).read_bytes()) for n in ("manifest.json", "tensors.safetensors")])
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        load_bundle(bad)


# -- the backbone a bundle points at ---------------------------------------------------------------
@pytest.mark.parametrize("spec", ["local-dir:/etc", "hf-hub:someone/something", "ViT-B-32:/tmp/evil.pt"])
def test_a_bundle_pointing_outside_open_clip_needs_trust(saved, spec):
    path = rewrite(saved, setter("backbone", value={"spec": spec}))
    with pytest.raises(UntrustedBackboneError, match="--trust-backbone") as info:
        Pipeline.from_bundle(path)
    assert spec.split(":", 1)[1] in str(info.value)
    assert "weights_only" not in str(info.value)


# -- property-style fuzzing -------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
FIELDS = ["format_version", "backbone", "concepts", "templates", "classes", "recipe", "metrics", "edit_log",
          "created", "tensors", "concept_layer"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=json_values, nested=st.booleans())
def test_fuzzed_manifests_only_ever_raise_bundle_errors(saved, field, value, nested):
    def change(m):
        if nested and isinstance(m.get(field), dict) and m[field]:
            m[field][sorted(m[field])[0]] = value
        elif nested and isinstance(m.get(field), list) and m[field]:
            m[field][0] = value
        else:
            m[field] = value
    path = rewrite(saved, change)
    try:
        model = load_bundle(path)
    except BundleError:
        return
    except CBMError as exc:  # pragma: no cover - a failure message worth reading
        raise AssertionError(f"a CBMError that is not a BundleError: {exc!r}")
    exp = model.explain_features(torch.nn.functional.normalize(torch.randn(2, model.embed_dim), dim=1))
    assert torch.isfinite(exp.probs).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_fuzzed_manifest_bytes_only_ever_raise_bundle_errors(saved, data):
    (saved / "manifest.json").write_bytes(data)
    with pytest.raises(BundleError):
        load_bundle(saved)

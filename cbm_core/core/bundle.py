"""Bundles: a fitted model as a folder or ``.zip`` of ``manifest.json`` + ``tensors.safetensors``.

Nothing in a bundle is ever unpickled: JSON and safetensors cannot run code. A bundle from a
stranger is still untrusted input, so loading validates *everything* before a model exists
(see docs/SECURITY.md):

- files: exactly the two known ones (a pickle or anything else is refused), regular files only
  (no symlinks, devices or folders in their place), read with a bound on the bytes actually read
  — a zip member's declared size is not trusted;
- the manifest: strict JSON (no NaN, bounded depth and size), every field of the right type,
  names printable and unique, numbers finite and bounded, the format and its version;
- the tensors: exactly the declared names, dtypes and shapes, consistent with the concepts,
  classes and concept layer; all finite; standard deviations > 0; percentiles sorted.

The sha256 hashes in the manifest catch accidents (a truncated copy, a half-written file), not
tampering: anyone can recompute them. What makes a stranger's bundle safe is the validation.

Format versions: 2 (current) stores the concept layer as ``{"kind", "config"}`` plus tensors named
``concept_layer.<name>``; version 1 (text-cosine models only, ``concept_vectors``) still loads.
Tensors are saved from CPU in float32, so a bundle saved on a GPU loads anywhere.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import stat
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .concept_layer import LAYER_SCHEMA, layer_from_parts
from .concepts import ConceptBank
from ..errors import BundleError, ConceptError
from ..data.images import BIDI_CONTROLS
from .model import ConceptBottleneckModel
from .stats import ConceptStats

FORMAT = "cbm-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"

# Limits: far above any real model (ImageNet-scale: ~5,000 concepts x 1,000 classes is ~40 MB).
MAX_MANIFEST_BYTES = 32 * 2**20
MAX_TENSOR_BYTES = 1 * 2**30
MAX_SAFETENSORS_HEADER = 1 * 2**20
MAX_JSON_DEPTH = 16
MAX_CONCEPTS = 100_000
MAX_CLASSES = 100_000
MAX_EMBED_DIM = 65_536
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 10_000
MAX_LIST_ITEMS = 200_000
_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_MANIFEST_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}
_TOP_LEVEL = {"format", "format_version", "backbone", "concepts", "templates", "classes", "recipe", "metrics",
              "edit_log", "created", "tensors", "concept_layer", "integrity"}
_CORE_TENSORS = ("weight", "bias", "stats.mean", "stats.std", "stats.quantiles")


def _canonical(obj) -> bytes:
    # surrogatepass: a hostile manifest may hold lone surrogates; checksumming must not crash on
    # them (the field checks refuse them with a reason afterwards).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- saving -----------------------------------------------------------------------------------------
def bundle_bytes(model: ConceptBottleneckModel) -> dict[str, bytes]:
    """The bundle's files as ``{name: bytes}``; refuses a model that would not load back (e.g. NaN weights)."""
    layer = model.concept_layer
    tensors = {f"concept_layer.{k}": v for k, v in layer.tensors().items()}
    tensors.update({"weight": model.weight, "bias": model.bias, "stats.mean": model.stats.mean,
                    "stats.std": model.stats.std, "stats.quantiles": model.stats.quantiles})
    if model.residual_weight is not None:
        tensors["residual_weight"] = model.residual_weight
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise BundleError(f"The model has non-finite numbers (NaN or inf) in {', '.join(bad)}; it was not saved. "
                          f"Refit it (a larger λ or fewer concepts) — a bundle must never carry NaN.")
    tensor_data = st_save(tensors)
    from .. import __version__

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backbone": {"spec": model.backbone_spec},
        "concept_layer": {"kind": layer.kind, "config": layer.config()},
        "concepts": model.concepts.to_records(),
        "templates": list(model.templates),
        "classes": list(model.classes),
        "recipe": model.recipe, "metrics": model.metrics, "edit_log": list(model.edit_log),
        "created": {**model.created, "cbm_core": __version__, "saved_with_python": platform.python_version()},
        "tensors": {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in tensors.items()},
    }
    try:
        manifest = json.loads(json.dumps(manifest, allow_nan=False))  # plain JSON types only (tuples -> lists)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"The model's metadata cannot be saved as strict JSON ({exc}); remove NaN or "
                          f"non-JSON values from its recipe, metrics or edit log.") from exc
    manifest["integrity"] = {"tensors_sha256": _sha(tensor_data), "manifest_sha256": _sha(_canonical(manifest))}
    files = {MANIFEST: json.dumps(manifest, indent=2, ensure_ascii=False).encode(), TENSORS: tensor_data}
    _model_from_files(files, "the model being saved")  # what we write must load: same checks as for a stranger's
    return files


def save_bundle(model: ConceptBottleneckModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to a folder, or to a zip when ``path`` ends in ``.zip``. Refuses to
    overwrite an existing bundle unless ``overwrite``."""
    path = Path(path)
    if bundle_exists(path) and not overwrite:
        raise BundleError(f"A bundle already exists at '{path}'. Choose a new name or pass overwrite=True "
                          f"(--overwrite on the command line).")
    files = bundle_bytes(model)
    if path.suffix == ".zip":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        tmp.replace(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = path / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path / name)
    return path


def bundle_exists(path: str | Path) -> bool:
    """Whether saving to ``path`` would replace a bundle (checked before a long build starts)."""
    path = Path(path)
    return path.is_file() if path.suffix == ".zip" else (path / MANIFEST).exists()


# -- reading files, bounded ---------------------------------------------------------------------
def _read_regular(path: Path, limit: int, label: str) -> bytes:
    """Read a regular file (never a symlink, device or folder), at most ``limit`` bytes."""
    if path.is_dir() and not path.is_symlink():
        raise BundleError(f"{label} is a folder; a bundle holds {MANIFEST} and {TENSORS} as plain files.")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if path.is_symlink():
            raise BundleError(f"{label} is a symbolic link; a bundle's files must be plain files in its folder.") from exc
        raise BundleError(f"Cannot read {label}: {exc.strerror or exc}.") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise BundleError(f"{label} is {kind}; a bundle holds {MANIFEST} and {TENSORS} as plain files.")
        if info.st_size > limit:
            raise BundleError(f"{label} is {info.st_size / 2**20:.0f} MB; the limit is {limit / 2**20:.0f} MB.")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise BundleError(f"{label} is larger than the {limit / 2**20:.0f} MB limit.")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _opened(path: Path):
    """A reader ``read(name, limit) -> bytes`` over a bundle folder or zip, after its file list is checked."""
    try:
        info = path.lstat()
    except OSError:
        raise BundleError(f"No bundle at '{path}'.") from None
    if stat.S_ISLNK(info.st_mode):  # the bundle itself may be a link; its files may not
        path = path.resolve()
        info = path.stat() if path.exists() else info
    if stat.S_ISDIR(info.st_mode):
        names = [e.name for e in os.scandir(path) if not e.name.startswith(".")]
        _check_names(names, path)
        yield lambda name, limit: _read_regular(path / name, limit, f"'{name}' in bundle '{path.name}'")
        return
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"'{path}' is neither a bundle folder nor a zip file.")
    if info.st_size > MAX_MANIFEST_BYTES + MAX_TENSOR_BYTES:
        raise BundleError(f"'{path.name}' is {info.st_size / 2**30:.1f} GB, larger than any bundle can be.")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"'{path.name}' is neither a bundle folder nor a zip file.")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _zip_members(zf, path)
            yield lambda name, limit: _read_member(zf, members[name], limit, f"'{name}' in '{path.name}'")
    except BundleError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError) as exc:
        raise BundleError(f"'{path.name}' is a damaged zip file ({type(exc).__name__}: {str(exc)[:200]}).") from exc


def _zip_members(zf: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    parents = {Path(i.filename).parent for i in infos}
    # Accept the "folder/…" layout of a zipped folder, nothing deeper, nothing absolute.
    if any(Path(i.filename).is_absolute() or ".." in Path(i.filename).parts for i in infos) or (
            parents - {Path(".")} and (len(parents) != 1 or len(next(iter(parents)).parts) != 1)):
        raise BundleError(f"'{path.name}' has nested folders; a bundle zip holds {MANIFEST} and {TENSORS}.")
    visible = [i for i in infos if not Path(i.filename).name.startswith(".")]
    names = [Path(i.filename).name for i in visible]
    if len(set(names)) != len(names):
        raise BundleError(f"'{path.name}' holds the same file twice; it was not made by cbm_core.")
    _check_names(names, path)
    members = {Path(i.filename).name: i for i in visible}
    for name, info in members.items():
        if info.flag_bits & 0x1:
            raise BundleError(f"'{name}' in '{path.name}' is encrypted; cbm_core bundles never are.")
    return members


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, label: str) -> bytes:
    """Decompress a zip member, counting the bytes that actually come out (the header's size may lie)."""
    if info.file_size > limit:
        raise BundleError(f"{label} unpacks to {info.file_size / 2**20:.1f} MB, more than its manifest allows "
                          f"({limit / 2**20:.1f} MB); refusing to open it.")
    chunks, total = [], 0
    with zf.open(info) as member:
        while True:
            chunk = member.read(min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise BundleError(f"{label} unpacks to more than {limit / 2**20:.1f} MB, more than its manifest "
                                  f"allows; refusing to open it.")
            chunks.append(chunk)
    return b"".join(chunks)


def _check_names(names: list[str], path: Path) -> None:
    pickles = [n for n in names if Path(n).suffix.lower() in _PICKLE_SUFFIXES]
    if pickles:
        raise BundleError(
            f"Bundle '{path.name}' contains {', '.join(pickles)}: pickle-style files can run code when opened, "
            f"and cbm_core bundles never contain them. It was not made by this tool or was tampered with; "
            f"it was not opened.")
    unknown = sorted(set(names) - {MANIFEST, TENSORS})
    if unknown:
        raise BundleError(f"Bundle '{path.name}' contains unexpected files ({', '.join(unknown[:5])}); "
                          f"a bundle holds only {MANIFEST} and {TENSORS}.")
    missing = [n for n in (MANIFEST, TENSORS) if n not in names]
    if missing:
        raise BundleError(f"Bundle '{path.name}' is missing {', '.join(missing)}; it is incomplete.")


# -- the manifest, validated ---------------------------------------------------------------------
def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(data: bytes, label: str):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"The manifest of {label} is not UTF-8 text.") from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BundleError(f"The manifest of {label} is nested too deeply to be a bundle manifest.") from None
    except ValueError as exc:  # JSONDecodeError, NaN / Infinity, integers of thousands of digits
        raise BundleError(f"The manifest of {label} is not valid JSON ({str(exc)[:200]}).") from None


class _Checker:
    """Type checks with messages that name the field."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, field: str, problem: str):
        raise BundleError(f"Bundle {self.label}: {field} {problem}. The file is damaged or was not made by cbm_core.")

    def text(self, value, field: str, max_chars: int = MAX_TEXT_CHARS, allow_empty: bool = True) -> str:
        if not isinstance(value, str):
            self.fail(field, f"must be a string, not {type(value).__name__}")
        problem = text_problem(value, max_chars, allow_empty)
        if problem:
            self.fail(field, problem)
        return value

    def dict(self, value, field: str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"must be an object, not {type(value).__name__}")
        return value

    def list(self, value, field: str, max_items: int = MAX_LIST_ITEMS, min_items: int = 0) -> list:
        if not isinstance(value, list):
            self.fail(field, f"must be a list, not {type(value).__name__}")
        if not min_items <= len(value) <= max_items:
            self.fail(field, f"must have {min_items} to {max_items} entries; it has {len(value)}")
        return value

    def number(self, value, field: str, low: float = -1e30, high: float = 1e30) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, not {type(value).__name__}")
        if not (math.isfinite(float(value)) and low <= value <= high):
            self.fail(field, f"must be a finite number in [{low:g}, {high:g}]; got {value!r}")
        return value

    def free_json(self, value, field: str, depth: int = 0) -> None:
        """Free-form metadata (recipe, metrics, created, edit-log details): bounded and printable."""
        if depth > MAX_JSON_DEPTH:
            self.fail(field, f"is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                self.text(key, f"a key of {field}", MAX_NAME_CHARS, allow_empty=False)
                self.free_json(item, f"{field}.{key}", depth + 1)
        elif isinstance(value, list):
            self.list(value, field)
            for i, item in enumerate(value):
                self.free_json(item, f"{field}[{i}]", depth + 1)
        elif isinstance(value, str):
            self.text(value, field)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.number(value, field, -1e300, 1e300)
        elif value is not None and not isinstance(value, bool):
            self.fail(field, f"has a value of type {type(value).__name__}")


def text_problem(value: str, max_chars: int = MAX_TEXT_CHARS, allow_empty: bool = True) -> str | None:
    """Why ``value`` is not safe to show (control / bidi-override characters, lone surrogates, too long), or None."""
    if len(value) > max_chars:
        return f"is {len(value)} characters long (the limit is {max_chars})"
    if not allow_empty and not value.strip():
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    for ch in value:
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in "\t\n") or category in ("Cs", "Co", "Cn") or ch in BIDI_CONTROLS:
            return f"contains the control character U+{ord(ch):04X}"
    return None


def _validate_manifest(manifest, label: str) -> tuple[dict, dict]:
    """Check every field's type and bounds (not yet the tensors); returns the manifest without its
    integrity section, and that section."""
    ck = _Checker(label)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{label} is not a cbm_core bundle (its manifest has no \"format\": \"{FORMAT}\").")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        ck.fail("format_version", "must be a whole number")
    if version > FORMAT_VERSION:
        raise BundleError(f"{label} uses bundle format version {version}, newer than this cbm_core understands "
                          f"({FORMAT_VERSION}). Upgrade cbm_core to open it.")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{label} uses bundle format version {version}, which this cbm_core no longer reads "
                          f"(it reads {', '.join(map(str, READABLE_VERSIONS))}). Rebuild it with `python -m cbm_core build`.")
    unknown = sorted(set(manifest) - _TOP_LEVEL)
    if unknown:
        ck.fail("the manifest", f"has unknown fields {[k[:40] for k in unknown[:5]]}")
    manifest = dict(manifest)
    integrity = ck.dict(manifest.pop("integrity", None), "integrity")
    for key in ("manifest_sha256", "tensors_sha256"):
        value = integrity.get(key)
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            ck.fail(f"integrity.{key}", "must be a sha256 hex digest")
    if integrity["manifest_sha256"] != _sha(_canonical(manifest)):
        raise BundleError(f"The manifest of {label} was changed after the bundle was saved (checksum mismatch): "
                          f"it was damaged or edited. Use the original file, or re-save the model from Python.")
    ck.text(ck.dict(manifest.get("backbone"), "backbone").get("spec"), "backbone.spec", 2_000, allow_empty=False)
    if set(manifest["backbone"]) != {"spec"}:
        ck.fail("backbone", "may only hold 'spec'")
    concepts = ck.list(manifest.get("concepts"), "concepts", MAX_CONCEPTS, min_items=1)
    for i, record in enumerate(concepts):
        ck.dict(record, f"concepts[{i}]")
        if not set(record) <= {"name", "source", "name_similarity"} or "name" not in record:
            ck.fail(f"concepts[{i}]", "must hold 'name' and optionally 'source' and 'name_similarity'")
        ck.text(record["name"], f"concepts[{i}].name", MAX_NAME_CHARS, allow_empty=False)
        ck.text(record.get("source", "user"), f"concepts[{i}].source", MAX_NAME_CHARS)
        if "name_similarity" in record:
            ck.number(record["name_similarity"], f"concepts[{i}].name_similarity", -1.0, 1.0)
    classes = ck.list(manifest.get("classes"), "classes", MAX_CLASSES, min_items=2)
    for i, name in enumerate(classes):
        ck.text(name, f"classes[{i}]", MAX_NAME_CHARS, allow_empty=False)
    folded = [" ".join(c.lower().split()) for c in classes]
    if len(set(folded)) != len(folded):
        dup = next(c for c in classes if folded.count(" ".join(c.lower().split())) > 1)
        ck.fail("classes", f"name '{dup}' twice")
    for i, template in enumerate(ck.list(manifest.get("templates", ["{}"]), "templates", 1_000, min_items=1)):
        ck.text(template, f"templates[{i}]", 1_000)
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            ck.fail(f"templates[{i}]", "must contain exactly one '{}' and no other braces")
    for key in ("recipe", "metrics", "created"):
        ck.free_json(ck.dict(manifest.get(key, {}), key), key)
    recipe_name = manifest.get("recipe", {}).get("name", "?")
    ck.text(recipe_name, "recipe.name", MAX_NAME_CHARS)
    for i, entry in enumerate(ck.list(manifest.get("edit_log", []), "edit_log", 100_000)):
        ck.free_json(ck.dict(entry, f"edit_log[{i}]"), f"edit_log[{i}]")
        ck.text(entry.get("op"), f"edit_log[{i}].op", MAX_NAME_CHARS, allow_empty=False)
    tensors = ck.dict(manifest.get("tensors"), "tensors")
    for name, meta in tensors.items():
        ck.dict(meta, f"tensors.{name[:40]}")
        shape = ck.list(meta.get("shape"), f"tensors.{name[:40]}.shape", 4)
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_LIST_ITEMS for n in shape):
            ck.fail(f"tensors.{name[:40]}.shape", "must be a list of positive whole numbers")
        if meta.get("dtype") not in _MANIFEST_DTYPES:
            ck.fail(f"tensors.{name[:40]}.dtype", f"must be one of {sorted(_MANIFEST_DTYPES)}")
    if version >= 2:
        layer = ck.dict(manifest.get("concept_layer"), "concept_layer")
        if set(layer) != {"kind", "config"} or layer["kind"] not in LAYER_SCHEMA:
            ck.fail("concept_layer", f"must be {{\"kind\": one of {list(LAYER_SCHEMA)}, \"config\": {{...}}}}")
        ck.free_json(ck.dict(layer["config"], "concept_layer.config"), "concept_layer.config")
    elif "concept_layer" in manifest:
        ck.fail("concept_layer", "is not part of format version 1")
    return manifest, integrity


def _expected_tensors(manifest: dict) -> tuple[str, dict[str, str]]:
    """The concept layer's kind and the tensor names a manifest must declare -> their layer names."""
    if manifest["format_version"] == 1:
        return "text_cosine", {"concept_vectors": "vectors"}
    kind = manifest["concept_layer"]["kind"]
    required, optional, _ = LAYER_SCHEMA[kind]
    declared = manifest["tensors"]
    return kind, {f"concept_layer.{n}": n for n in required + tuple(o for o in optional if f"concept_layer.{o}" in declared)}


def _safetensors_header(data: bytes, label: str) -> dict:
    """Parse the safetensors header ourselves, bounded, before any tensor is materialised."""
    if len(data) < 8:
        raise BundleError(f"The tensors of {label} are truncated.")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise BundleError(f"The tensors of {label} have a damaged header.")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(f"The tensors of {label} have a damaged header.") from None
    if not isinstance(header, dict):
        raise BundleError(f"The tensors of {label} have a damaged header.")
    header.pop("__metadata__", None)
    return header


def _load_tensors(data: bytes, manifest: dict, label: str) -> dict[str, torch.Tensor]:
    kind, layer_names = _expected_tensors(manifest)
    expected = set(_CORE_TENSORS) | set(layer_names) | ({"residual_weight"} & set(manifest["tensors"]))
    declared = manifest["tensors"]
    if set(declared) != expected:
        raise BundleError(f"Bundle {label}: the manifest declares tensors {sorted(declared)[:10]}, but a "
                          f"'{kind}' model has exactly {sorted(expected)}.")
    header = _safetensors_header(data, label)
    if set(header) != expected:
        raise BundleError(f"Bundle {label}: the tensor file holds {sorted(header)[:10]}, not the declared {sorted(expected)}.")
    for name, meta in header.items():
        if not isinstance(meta, dict) or meta.get("dtype") not in _FLOAT_DTYPES:
            raise BundleError(f"Tensor '{name}' of {label} is not a floating-point tensor.")
        if meta.get("shape") != declared[name]["shape"]:
            raise BundleError(f"Tensor '{name}' in {label} has shape {meta.get('shape')}; the manifest says "
                              f"{declared[name]['shape']}.")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise BundleError(f"The tensors of {label} cannot be read ({type(exc).__name__}).") from exc
    out = {}
    for name, t in tensors.items():
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise BundleError(f"Tensor '{name}' in {label} holds NaN or inf; it cannot be used.")
        out[name] = t
    return out


def _tensor_bytes_limit(manifest: dict, label: str) -> int:
    """What the tensor file may hold, from the manifest's declared shapes (float64 at most) plus a
    header: a zip member that inflates beyond it is refused before it can fill memory."""
    total = sum(8 * math.prod(meta["shape"]) for meta in manifest["tensors"].values())
    if total > MAX_TENSOR_BYTES:
        raise BundleError(f"Bundle {label} declares {total / 2**30:.1f} GB of tensors; the limit is "
                          f"{MAX_TENSOR_BYTES / 2**30:.0f} GB.")
    return total + 8 + MAX_SAFETENSORS_HEADER


def _read_validated(read, label: str) -> tuple[dict, bytes]:
    """The manifest (checked, without its integrity section) and the tensor bytes (checksum checked).
    The manifest is read and checked first, so the tensors are read with a bound it implies."""
    manifest, integrity = _validate_manifest(_parse_json(read(MANIFEST, MAX_MANIFEST_BYTES), label), label)
    tensor_data = read(TENSORS, _tensor_bytes_limit(manifest, label))
    if integrity["tensors_sha256"] != _sha(tensor_data):
        raise BundleError(f"The tensors of {label} do not match its manifest (checksum mismatch): the file is "
                          f"damaged or was replaced.")
    return manifest, tensor_data


def _model_from_files(files: dict[str, bytes], label: str) -> ConceptBottleneckModel:
    return _model_from_manifest(*_read_validated(lambda name, limit: files[name], label), label)


def _model_from_manifest(manifest: dict, tensor_data: bytes, label: str) -> ConceptBottleneckModel:
    tensors = _load_tensors(tensor_data, manifest, label)
    kind, layer_names = _expected_tensors(manifest)
    K, C = len(manifest["concepts"]), len(manifest["classes"])
    layer_tensors = {short: tensors[full] for full, short in layer_names.items()}
    config = manifest["concept_layer"]["config"] if manifest["format_version"] >= 2 else {}
    try:
        layer = layer_from_parts(kind, config, layer_tensors)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"Bundle {label}: its concept layer is inconsistent ({exc}).") from None
    D = layer.embed_dim
    shapes = {"weight": (C, K), "bias": (C,), "stats.mean": (K,), "stats.std": (K,), "stats.quantiles": (101, K),
              "residual_weight": (C, D)}
    if layer.n_concepts != K or D > MAX_EMBED_DIM:
        raise BundleError(f"Bundle {label} is inconsistent: its concept layer gives {layer.n_concepts} concepts "
                          f"from {D}-d embeddings; the manifest lists {K} concepts.")
    for name, want in shapes.items():
        if name in tensors and tuple(tensors[name].shape) != want:
            raise BundleError(f"Bundle {label}: tensor '{name}' has shape {list(tensors[name].shape)}; {K} concepts "
                              f"and {C} classes need {list(want)}.")
    std, quantiles, mean = tensors["stats.std"], tensors["stats.quantiles"], tensors["stats.mean"]
    if not bool((std > 0).all()):
        raise BundleError(f"Bundle {label}: a concept's training standard deviation is not positive.")
    if not bool((quantiles[1:] >= quantiles[:-1]).all()):
        raise BundleError(f"Bundle {label}: the training percentiles of a concept are not in increasing order.")
    slack = 1e-4 * (1 + quantiles.abs().amax(0))
    if not bool(((mean >= quantiles[0] - slack) & (mean <= quantiles[-1] + slack)).all()):
        raise BundleError(f"Bundle {label}: a concept's training mean lies outside its own range of scores.")
    try:
        concepts = ConceptBank.from_records(manifest["concepts"])
        stats = ConceptStats(concepts.names, mean, std, quantiles)
        return ConceptBottleneckModel(
            backbone_spec=manifest["backbone"]["spec"], concepts=concepts, concept_layer=layer,
            classes=tuple(manifest["classes"]), stats=stats, weight=tensors["weight"], bias=tensors["bias"],
            residual_weight=tensors.get("residual_weight"), templates=tuple(manifest.get("templates", ["{}"])),
            recipe=manifest.get("recipe", {}), metrics=manifest.get("metrics", {}),
            edit_log=tuple(manifest.get("edit_log", [])), created=manifest.get("created", {}))
    except ConceptError as exc:
        raise BundleError(f"Bundle {label}: its concept list is unusable. {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"Bundle {label} is inconsistent: {exc}") from None


def _parse(path: Path) -> tuple[dict, bytes]:
    with _opened(path) as read:
        return _read_validated(read, f"'{path.name}'")


def read_manifest(path: str | Path) -> dict:
    """The validated manifest of a bundle (format, version, every field's type, checksums); for summaries."""
    return _parse(Path(path))[0]


def load_bundle(path: str | Path) -> ConceptBottleneckModel:
    """Load a bundle folder or zip onto the CPU, validating everything in it (see the module
    docstring). Raises ``BundleError`` with the reason. Loads no backbone: see
    ``backbone.spec_needs_trust`` for what a bundle's backbone spec may point at."""
    path = Path(path)
    manifest, tensor_data = _parse(path)
    return _model_from_manifest(manifest, tensor_data, f"'{path.name}'")

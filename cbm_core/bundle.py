"""Bundles: a fitted model as a folder or ``.zip`` of ``manifest.json`` + ``tensors.safetensors``.

Nothing in a bundle is ever unpickled: JSON and safetensors cannot run code, so a bundle from
a stranger is safe to open. Loading checks, in order: only the two known files are present
(a pickle or any other file is refused), the format and its version, the integrity hashes of
both files, and every tensor's shape against the manifest. Tensors are saved from CPU, so a
bundle saved on a GPU loads anywhere.
"""
from __future__ import annotations

import hashlib
import json
import platform
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .concepts import ConceptBank
from .errors import BundleError
from .model import ConceptBottleneckModel, ConceptStats

FORMAT = "cbm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
MAX_BUNDLE_BYTES = 4 * 2**30
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_bytes(model: ConceptBottleneckModel) -> dict[str, bytes]:
    """The bundle's files as ``{name: bytes}``."""
    tensors = {"concept_vectors": model.concept_vectors, "weight": model.weight, "bias": model.bias,
               "stats.mean": model.stats.mean, "stats.std": model.stats.std, "stats.quantiles": model.stats.quantiles}
    if model.residual_weight is not None:
        tensors["residual_weight"] = model.residual_weight
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    tensor_data = st_save(tensors)
    from . import __version__

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backbone": {"spec": model.backbone_spec},
        "concepts": model.concepts.to_records(),
        "templates": list(model.templates),
        "classes": list(model.classes),
        "recipe": model.recipe, "metrics": model.metrics, "edit_log": list(model.edit_log),
        "created": {**model.created, "cbm_core": __version__, "saved_with_python": platform.python_version()},
        "tensors": {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in tensors.items()},
    }
    manifest["integrity"] = {"tensors_sha256": _sha(tensor_data), "manifest_sha256": _sha(_canonical(manifest))}
    return {MANIFEST: json.dumps(manifest, indent=2, ensure_ascii=False).encode(), TENSORS: tensor_data}


def save_bundle(model: ConceptBottleneckModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to a folder, or to a zip when ``path`` ends in ``.zip``. Refuses to
    overwrite an existing bundle unless ``overwrite``."""
    path = Path(path)
    files = bundle_bytes(model)
    exists = path.is_file() if path.suffix == ".zip" else (path / MANIFEST).exists()
    if exists and not overwrite:
        raise BundleError(f"A bundle already exists at '{path}'. Choose a new name or pass overwrite=True.")
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


def _read_files(path: Path) -> dict[str, bytes]:
    if not path.exists():
        raise BundleError(f"No bundle at '{path}'.")
    if path.is_dir():
        entries = {p.name: p for p in path.iterdir() if not p.name.startswith(".")}
        _check_names(list(entries), path)
        return {name: p.read_bytes() for name, p in entries.items() if name in (MANIFEST, TENSORS)}
    if not zipfile.is_zipfile(path):
        raise BundleError(f"'{path.name}' is neither a bundle folder nor a zip file.")
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        names = [Path(i.filename).name for i in infos]
        if any(Path(i.filename).parent != Path(".") for i in infos):
            # Accept the common "folder/…" layout of a zipped folder, nothing deeper.
            parents = {Path(i.filename).parent for i in infos}
            if len(parents) != 1 or len(next(iter(parents)).parts) != 1:
                raise BundleError(f"'{path.name}' has nested folders; a bundle zip holds {MANIFEST} and {TENSORS}.")
        _check_names([n for n in names if not n.startswith(".")], path)
        if sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
            raise BundleError(f"'{path.name}' unpacks to more than {MAX_BUNDLE_BYTES / 2**30:.0f} GB; refusing to open it.")
        return {Path(i.filename).name: zf.read(i) for i in infos if Path(i.filename).name in (MANIFEST, TENSORS)}


def _check_names(names: list[str], path: Path) -> None:
    pickles = [n for n in names if Path(n).suffix.lower() in _PICKLE_SUFFIXES]
    if pickles:
        raise BundleError(
            f"Bundle '{path.name}' contains {', '.join(pickles)}: pickle-style files can run code when opened, "
            f"and cbm_core bundles never contain them. It was not made by this tool or was tampered with; "
            f"it was not opened.")
    unknown = sorted(set(names) - {MANIFEST, TENSORS})
    if unknown:
        raise BundleError(f"Bundle '{path.name}' contains unexpected files ({', '.join(unknown)}); "
                          f"a bundle holds only {MANIFEST} and {TENSORS}.")
    missing = [n for n in (MANIFEST, TENSORS) if n not in names]
    if missing:
        raise BundleError(f"Bundle '{path.name}' is missing {', '.join(missing)}; it is incomplete.")


def read_manifest(path: str | Path) -> dict:
    """The manifest of a bundle, checked (format, version, integrity); for summaries."""
    return _parse(Path(path))[0]


def _parse(path: Path) -> tuple[dict, bytes]:
    files = _read_files(path)
    try:
        manifest = json.loads(files[MANIFEST].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"The manifest of '{path.name}' is not valid JSON ({exc}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"'{path.name}' is not a cbm_core bundle (its manifest has no \"format\": \"{FORMAT}\").")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"'{path.name}' uses bundle format version {version}, newer than this cbm_core "
                          f"understands ({FORMAT_VERSION}). Upgrade cbm_core to open it.")
    if version < FORMAT_VERSION:
        raise BundleError(f"'{path.name}' uses bundle format version {version}, which this cbm_core no longer "
                          f"reads (current: {FORMAT_VERSION}). Rebuild it with `python -m cbm_core build`.")
    integrity = manifest.pop("integrity", None)
    if not isinstance(integrity, dict):
        raise BundleError(f"The manifest of '{path.name}' has no integrity section; it was not saved by cbm_core.")
    if integrity.get("manifest_sha256") != _sha(_canonical(manifest)):
        raise BundleError(f"The manifest of '{path.name}' was changed after the bundle was saved (checksum "
                          f"mismatch). Use the original file, or re-save the model from Python.")
    if integrity.get("tensors_sha256") != _sha(files[TENSORS]):
        raise BundleError(f"The tensors of '{path.name}' do not match its manifest (checksum mismatch): the "
                          f"file is corrupt or was replaced.")
    return manifest, files[TENSORS]


def load_bundle(path: str | Path) -> ConceptBottleneckModel:
    """Load a bundle folder or zip onto the CPU. Raises ``BundleError`` with the reason."""
    path = Path(path)
    manifest, tensor_data = _parse(path)
    try:
        tensors = st_load(tensor_data)
    except Exception as exc:
        raise BundleError(f"The tensors of '{path.name}' cannot be read ({exc}).") from exc
    declared = manifest.get("tensors", {})
    for name, meta in declared.items():
        if name not in tensors:
            raise BundleError(f"Bundle '{path.name}' declares tensor '{name}' but does not contain it.")
        if list(tensors[name].shape) != meta.get("shape"):
            raise BundleError(f"Tensor '{name}' in '{path.name}' has shape {list(tensors[name].shape)}; "
                              f"the manifest says {meta.get('shape')}.")
    try:
        concepts = ConceptBank.from_records(manifest["concepts"])
        stats = ConceptStats(concepts.names, tensors["stats.mean"], tensors["stats.std"], tensors["stats.quantiles"])
        return ConceptBottleneckModel(
            backbone_spec=manifest["backbone"]["spec"], concepts=concepts, concept_vectors=tensors["concept_vectors"],
            classes=tuple(manifest["classes"]), stats=stats, weight=tensors["weight"], bias=tensors["bias"],
            residual_weight=tensors.get("residual_weight"), templates=tuple(manifest.get("templates", ["{}"])),
            recipe=manifest.get("recipe", {}), metrics=manifest.get("metrics", {}),
            edit_log=tuple(manifest.get("edit_log", [])), created=manifest.get("created", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"Bundle '{path.name}' is inconsistent: {exc}") from exc

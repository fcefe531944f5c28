"""Feature extraction on Ray Data: CPU tasks decode and resize, encoder actors encode.

Optional: ``pip install -r requirements-scale.txt`` (``ray[data]``); imported only when used, with a
``CBMError`` saying how to install it when it is missing.

    chunks of ``batch_size`` records ─(Ray tasks, 1 CPU each)─> decode + resize to uint8 ─> object store
      ─(actor pool: one model per actor, 1 GPU each when the cluster has GPUs)─> normalise + encode
      ─> the driver, which writes shards of the feature store (``cbm_core.data.store``)

- **Same preprocessing as in process**: a task decodes with ``images.decode_image`` and resizes with the
  backbone's own transform minus its last two steps (``data._Decoded`` and ``data._PixelNormalizer``,
  the very objects the DataLoader path uses); the actor normalises each uint8 batch and calls
  ``Backbone.encode_images`` on a copy of the same model. Each Ray row is one in-process batch
  (``batch_size`` consecutive records, failed images left out), so the encoder sees exactly the batches
  the DataLoader path gives it and the features are bit-identical on a CPU. Bad images become
  ``(index, reason)`` reports, as in process.
- **Where things run**: ``address=None`` starts a private local Ray (``ray.init(address="local",
  num_cpus=..., include_dashboard=False)``, usage statistics off, its ports bound to 127.0.0.1 when Ray
  was not imported before — see ``ray_session``; token authentication on, Ray's default) and shuts it
  down afterwards; an address (``ray://head:10001``, ``auto``, or
  ``RAY_ADDRESS``) connects to a running cluster, whose nodes need this package's dependencies
  (torch, open_clip) and the images at the same paths (a shared filesystem); ``cbm_core`` itself is
  shipped to them as a ``py_modules`` runtime environment. A Ray session already open in this process
  (``ray.init`` by the caller) is used as it is and left open.
- **The model** travels once through Ray's object store (Ray pickles between its own processes; nothing
  of ours is pickled to disk). Actors put it on their GPU when Ray gave them one, else on the CPU, in
  the backbone's precision — which is part of the store's key.
- **Results** come back to the driver (2 KB per image at D = 512, against ~100 KB of JPEG read by the
  workers), which writes the store: the store lives where the driver runs, no shared write access needed.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import CBMError

INSTALL_HINT = "pip install -r requirements-scale.txt"


def require_ray():
    """The ``ray`` module with Ray Data, or a ``CBMError`` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise CBMError(f"The Ray engine needs Ray Data, which is not installed ({exc.name or exc}). Install the "
                       f"optional extra: {INSTALL_HINT} (ray[data]). The in-process engine needs nothing more.") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None):
    """A Ray session for one extraction: the caller's if one is open, else a private local one
    (``address`` None) or a connection to the cluster at ``address``; closed again if opened here."""
    if address is None and "ray" not in sys.modules:
        # Read by Ray at import: a private local Ray then addresses itself as 127.0.0.1 and binds its ports
        # there only (by default it uses, and listens on, the machine's network address). Set for this
        # process, so a process that later connects to a cluster should set it to 1 itself.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    package = str(Path(__file__).resolve().parent)
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local run reports nothing anywhere
        kwargs = dict(address="local", num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False,
                      runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                          p for p in (str(Path(package).parent), os.environ.get("PYTHONPATH")) if p)}})
        if object_store_memory:
            kwargs["object_store_memory"] = int(object_store_memory)
    else:
        kwargs = dict(address=address, runtime_env={"py_modules": [package]})
    try:
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    except Exception as exc:  # connection refused, bad address, version mismatch: say which and what to do
        where = "a local Ray" if address is None else f"the Ray cluster at '{address}'"
        raise CBMError(f"Could not start {where}: {type(exc).__name__}: {exc}. For a cluster, check the address "
                       "(ray://HEAD:10001 for Ray Client, or run on the head node with --ray auto) and that the "
                       "cluster runs the same Ray and Python versions.") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _chunk_rows(dataset, indices: Sequence[int], batch_size: int) -> list[dict]:
    """One row per in-process batch: ``batch_size`` consecutive entries of ``indices``."""
    rows = []
    for start in range(0, len(indices), batch_size):
        idx = list(indices[start:start + batch_size])
        recs = [dataset.records[i] for i in idx]
        rows.append({"indices": idx, "paths": [r.path for r in recs], "labels": [r.label for r in recs]})
    return rows


class _Decode:
    """Ray task body: decode + resize one chunk (uint8, or float when the transform cannot be split)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, row: dict) -> dict:
        import numpy as np

        from .datasets import ImageDataset, ImageRecord
        from .features import _Decoded

        idx = [int(i) for i in row["indices"]]
        records = tuple(ImageRecord(str(p), int(lbl)) for p, lbl in zip(row["paths"], row["labels"]))
        decoded = _Decoded(ImageDataset(records, ()), self.transform)
        ok, pixels, labels, failed = [], [], [], []
        for j, i in enumerate(idx):
            _, px, label, reason = decoded[j]
            if px is None:
                failed.append([i, reason])
            else:
                ok.append(i)
                pixels.append(px)
                labels.append(label)
        stack = torch.stack(pixels).numpy() if pixels else np.zeros((0,), dtype=np.uint8)
        return {"indices": np.asarray(ok, dtype=np.int64), "pixels": stack,
                "labels": np.asarray(labels, dtype=np.int64), "failed": json.dumps(failed)}


class _Encode:
    """Ray actor: one copy of the model (on the actor's GPU if it has one); normalises and encodes
    each chunk with ``Backbone.encode_images``, as the in-process path does."""

    def __init__(self, model_ref, spec: str, precision: str, mean, std, threads: int | None = None):
        import ray

        from ..backbone import PRECISIONS, Backbone
        from .features import _PixelNormalizer

        if threads:
            torch.set_num_threads(int(threads))
        model = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
        device = torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")
        model = model.to(device=device, dtype=PRECISIONS[precision]).eval()
        self.backbone = Backbone(spec, model, None, None, device, precision)
        self.normalizer = _PixelNormalizer(None, mean, std) if mean is not None else None

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = {"indices": [], "embeddings": [], "labels": [], "failed": []}
        for j in range(len(batch["failed"])):
            pixels = np.asarray(batch["pixels"][j])
            emb = np.zeros((0,), dtype=np.float32)
            if pixels.size:
                x = torch.from_numpy(np.ascontiguousarray(pixels))
                if x.dtype == torch.uint8:
                    x = self.normalizer(x, self.backbone.device)
                emb = self.backbone.encode_images(x, batch_size=len(x)).embeddings.numpy()
            out["indices"].append(np.asarray(batch["indices"][j], dtype=np.int64))
            out["embeddings"].append(emb)
            out["labels"].append(np.asarray(batch["labels"][j], dtype=np.int64))
            out["failed"].append(batch["failed"][j])
        return {k: _column(v) for k, v in out.items()}


def _column(values: list):
    """A batch column of per-row arrays of different lengths (Ray Data takes an object array)."""
    import numpy as np

    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


def encode_with_ray(backbone, dataset, indices: Sequence[int], *, batch_size: int = 64, address: str | None = None,
                    num_cpus: int | None = None, num_gpus: float | None = None, encoders: int | None = None,
                    encoder_threads: int | None = None, object_store_memory: int | None = None
                    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[int], list[tuple[int, str]]]]:
    """Encode the records ``indices`` of ``dataset`` on Ray; yields, per chunk of ``batch_size`` records
    (in completion order), ``(record indices, embeddings (n, D) or None, labels, [(index, reason)])`` —
    what ``data._encode_stream`` yields in process.

    num_gpus: GPUs per encoder actor (default: 1 when the cluster has GPUs, else 0); encoders: actor
    pool size (default: one per GPU, else half the CPUs); encoder_threads: torch threads per CPU actor
    (default: this process's ``torch.get_num_threads()``, as the in-process encoder uses — a matrix
    product's rounding can depend on how many threads split it, and the same count keeps the features
    bit-identical to the in-process engine's)."""
    import numpy as np

    from .features import _PixelNormalizer

    normalizer = _PixelNormalizer.split(backbone.preprocess)
    transform = normalizer.to_uint8 if normalizer else backbone.preprocess
    model = backbone.model if backbone.device.type == "cpu" else copy.deepcopy(backbone.model).to("cpu")
    rows = _chunk_rows(dataset, indices, batch_size)
    with ray_session(address, num_cpus, object_store_memory) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (tqdm, or progress()) counts images instead
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        if num_gpus is None:
            num_gpus = 1 if gpus else 0
        if encoders is None:
            encoders = max(1, int(gpus // num_gpus) if num_gpus else cpus // 2)
        if encoder_threads is None and not num_gpus:
            encoder_threads = torch.get_num_threads()
        model_ref = ray.put(model)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 10_000)))
        ds = ds.map(_Decode(transform), num_cpus=1)
        # Each encoder reserves the memory its model copy and a few batches take. Besides being true, a
        # reservation that differs from the decode tasks' keeps Ray Data from fusing decoding into the
        # actors (which would make each actor decode, then encode, one after the other).
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        ds = ds.map_batches(
            _Encode, batch_size=1, batch_format="numpy", num_gpus=num_gpus or None,
            num_cpus=0 if num_gpus else 1, memory=2 * model_bytes + 768 * 2**20,
            compute=ray.data.ActorPoolStrategy(size=int(encoders)),
            fn_constructor_kwargs={"model_ref": model_ref, "spec": backbone.spec, "precision": backbone.precision,
                                   "mean": normalizer.mean.flatten().tolist() if normalizer else None,
                                   "std": normalizer.std.flatten().tolist() if normalizer else None,
                                   "threads": encoder_threads})
        for row in ds.iter_rows():
            idx = [int(i) for i in np.asarray(row["indices"]).reshape(-1)]
            emb = torch.from_numpy(np.array(row["embeddings"], dtype=np.float32)).reshape(len(idx), -1) if idx else None
            labels = [int(x) for x in np.asarray(row["labels"]).reshape(-1)]
            failed = [(int(i), str(r)) for i, r in json.loads(str(row["failed"]))]
            yield idx, emb, labels, failed

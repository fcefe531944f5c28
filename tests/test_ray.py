"""End to end on a real local Ray (2 CPUs, one session for the module): the Ray engine gives the
in-process features bit for bit, reports the same bad images, resumes a store the in-process engine
started, and runs from the command line. Skipped when Ray is not installed (CI installs it:
requirements-scale.txt)."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import torch

# before Ray is imported: the local Ray binds to 127.0.0.1 only, and reports no usage statistics
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from cbm_core.data.datasets import ImageDataset  # noqa: E402
from cbm_core.data.features import extract_features  # noqa: E402
from cbm_core.data.store import FeatureStore, shard_name, write_store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (start-up takes seconds): 2 CPUs, no dashboard, no usage stats,
    on 127.0.0.1; the workers import cbm_core from this checkout."""
    if ray.is_initialized():
        ray.shutdown()
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    print(f"\nlocal Ray started in {time.perf_counter() - t:.1f} s")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """40 small Toy Birds PNGs and one broken file (record 9)."""
    from cbm_core.demo.world import export

    folder = tmp_path_factory.mktemp("raybirds")
    manifest = export(folder, {"train": 40}, size=32)
    (folder / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with manifest.open() as f:
        rows = list(csv.reader(f))
    bad = list(rows[1])
    bad[0] = "train/broken.jpg"
    rows.insert(10, bad)
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return ImageDataset.from_csv(manifest)


@pytest.fixture(scope="module")
def reference(birds, tiny_vit):
    return extract_features(tiny_vit, birds, use_cache=False, batch_size=8, num_workers=0)


def test_ray_engine_equals_in_process_bit_for_bit(local_ray, birds, tiny_vit, reference):
    seen = []
    got = extract_features(tiny_vit, birds, use_cache=False, batch_size=8, engine="ray",
                           progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(got.embeddings, reference.embeddings)  # same batches, same model: same bits on a CPU
    assert torch.equal(got.labels, reference.labels)
    assert torch.equal(got.kept, reference.kept)
    assert got.skipped == reference.skipped and len(got.skipped) == 1
    assert got.skipped[0][0] == birds.records[9].path
    assert got.groups == reference.groups and torch.equal(got.concept_labels, reference.concept_labels)
    assert seen[-1] == (len(birds), len(birds)) and not got.from_cache


def test_ray_resumes_a_store_the_in_process_engine_started(local_ray, tmp_path, birds, tiny_vit, reference):
    root = tmp_path / "s"
    write_store(tiny_vit, birds, root, shard_size=8, batch_size=8, num_workers=0)
    m = json.loads((root / "manifest.json").read_text())
    for i in (1, 3):  # as if the run had stopped before these
        del m["shards"][str(i)]
        (root / shard_name(i)).unlink()
    (root / "manifest.json").write_text(json.dumps(m))
    store = write_store(tiny_vit, birds, root, engine="ray", shard_size=8, batch_size=8)
    assert store.last_write["written"] == [1, 3] and store.last_write["reused"] == [0, 2, 4, 5]
    assert store.last_write["encoded"] == 15  # shard 1 holds the broken record 9
    loaded = FeatureStore.open(root).load(birds)
    assert torch.equal(loaded.embeddings, reference.embeddings) and loaded.skipped == reference.skipped


def test_cli_extract_on_ray(local_ray, tmp_path, birds, tiny_vit, reference, capsys):
    from cbm_core.cli import main

    manifest = Path(birds.records[0].path).parent.parent / "manifest.csv"
    torch.manual_seed(0)  # tiny-vit:random with the fixture's seed: the fixture's weights
    assert main(["extract", "--backbone", "tiny-vit:random", "--data", str(manifest), "--ray",
                 "--store", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "c"), "--batch-size", "8",
                 "--shard-size", "16", "--quiet"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["engine"] == "ray" and report["skipped"] == 1 and report["shards_written"] == 3
    assert "broken.jpg" in out.err
    assert torch.equal(FeatureStore.open(tmp_path / "s").load().embeddings, reference.embeddings)

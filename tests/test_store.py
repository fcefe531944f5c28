"""The sharded feature store (in process): equal to extract_features, resumable after a real kill,
damaged shards redone, a stranger's store validated; and recipes that train from it match the
in-memory fits (elastic net, Label-free CBM's projection, DN-CBM's SAE)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cbm_core.data.datasets import ImageDataset
from cbm_core.data.features import extract_features, feature_key
from cbm_core.data.store import FeatureStore, StoreError, default_store_root, shard_name, write_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """70 small Toy Birds PNGs + 2 broken files, as a CSV dataset (rows 13 and 50 are bad)."""
    from cbm_core.demo.world import export

    folder = tmp_path_factory.mktemp("birds")
    manifest = export(folder, {"train": 70}, size=32)
    (folder / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "train" / "empty.png").write_bytes(b"")
    with manifest.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    bad1 = list(body[0]); bad1[0] = "train/broken.png"
    bad2 = list(body[1]); bad2[0] = "train/empty.png"
    body.insert(13, bad1)
    body.insert(50, bad2)
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows([header] + body)
    return ImageDataset.from_csv(manifest)


@pytest.fixture(scope="module")
def reference(birds, tiny_vit):
    return extract_features(tiny_vit, birds, use_cache=False, batch_size=8, num_workers=0)


def assert_same_features(a, b):
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.kept, b.kept)
    assert a.skipped == b.skipped
    assert a.groups == b.groups
    assert torch.equal(a.concept_labels, b.concept_labels)


def test_store_equals_extract_features_bit_for_bit(tmp_path, birds, tiny_vit, reference):
    store = write_store(tiny_vit, birds, tmp_path / "s", shard_size=16, batch_size=8, num_workers=0)
    assert store.complete and store.n_shards == 5 and store.shard_size == 16
    assert len(store) == len(birds) - 2 and store.n_skipped == 2
    assert_same_features(store.load(birds), reference)
    assert [p for p, _ in reference.skipped] == [birds.records[13].path, birds.records[50].path]
    # the manifest says what each shard holds, with its hash
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["key"] == feature_key(tiny_vit, birds.fingerprint())
    e = m["shards"]["0"]
    assert e["rows"] + e["skipped"] == 16
    assert e["sha256"] == hashlib.sha256((tmp_path / "s" / shard_name(0)).read_bytes()).hexdigest()
    # the FeatureSource view: passes and random access give the same rows
    again = FeatureStore.open(tmp_path / "s")
    assert torch.equal(torch.cat(list(again.iter_batches(7))), reference.embeddings)
    rows = torch.tensor([0, 69, 5, 33, 16, 15, 5])
    assert torch.equal(again.take(rows), reference.embeddings[rows])
    assert torch.equal(again.labels, reference.labels)


def test_shard_size_is_a_multiple_of_the_batch(tmp_path, birds, tiny_vit):
    store = write_store(tiny_vit, birds, tmp_path / "s", shard_size=10, batch_size=8, num_workers=0)
    assert store.shard_size == 16  # rounded up, so shards hold whole in-process batches


def test_extract_features_reads_a_complete_store_as_a_cache_hit(tmp_path, birds, tiny_vit, reference):
    store = write_store(tiny_vit, birds, cache_dir=tmp_path / "cache", shard_size=16, batch_size=8, num_workers=0)
    assert store.root == default_store_root(tiny_vit, birds, tmp_path / "cache")
    hit = extract_features(tiny_vit, birds, cache_dir=tmp_path / "cache")
    assert hit.from_cache
    assert_same_features(hit, reference)
    assert not list((tmp_path / "cache").glob("*.safetensors"))  # no second copy was made


_KILLER = r"""
import os, signal, sys, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from conftest import TINY_VIT
from cbm_core.backbone import load_backbone, register_model_config
from cbm_core.data.datasets import ImageDataset
from cbm_core.data.store import FeatureStore, write_store
register_model_config("tiny-vit", TINY_VIT)
torch.manual_seed(0)
bb = load_backbone("tiny-vit:random", device="cpu")
ds = ImageDataset.from_csv(sys.argv[2])
root = sys.argv[3]
def progress(done, total):
    if len(FeatureStore.open(root).complete_shards()) >= 2:
        os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no finally: a real crash
write_store(bb, ds, root, shard_size=16, batch_size=8, num_workers=0, progress=progress)
"""


def test_a_killed_run_resumes_with_only_the_missing_shards(tmp_path, birds, tiny_vit, reference):
    root = tmp_path / "s"
    manifest = Path(birds.records[0].path).parent.parent / "manifest.csv"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(ROOT), str(manifest), str(root)],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    half = FeatureStore.open(root)
    assert half.complete_shards() == [0, 1] and half.missing_shards() == [2, 3, 4]
    with pytest.raises(StoreError, match="incomplete"):
        half.load()
    (root / ".shard-000002.safetensors.tmp-1").write_bytes(b"half a shard")  # what a kill mid-write leaves
    done = []
    store = write_store(tiny_vit, birds, root, shard_size=16, batch_size=8, num_workers=0,
                        progress=lambda d, t: done.append(d))
    assert store.last_write["reused"] == [0, 1] and store.last_write["written"] == [2, 3, 4]
    assert store.last_write["encoded"] == len(birds) - 32 - 1  # record 50 (broken) lies in shard 3
    assert done[0] == 32  # progress starts at what was already there
    assert_same_features(store.load(birds), reference)


def test_a_damaged_shard_is_redone_never_trusted(tmp_path, birds, tiny_vit, reference):
    root = tmp_path / "s"
    write_store(tiny_vit, birds, root, shard_size=16, batch_size=8, num_workers=0)
    path = root / shard_name(2)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in the features
    path.write_bytes(bytes(data))
    (root / shard_name(4)).write_bytes((root / shard_name(4)).read_bytes()[:100])  # truncated
    store = FeatureStore.open(root)
    with pytest.raises(StoreError, match="damaged"):
        store.read_shard(2)
    assert store.verify() == [2, 4]
    again = write_store(tiny_vit, birds, root, shard_size=16, batch_size=8, num_workers=0)
    assert again.last_write["redone"] == [2, 4] and again.last_write["written"] == [2, 4]
    assert_same_features(again.load(birds), reference)


def test_a_store_of_another_dataset_is_refused(tmp_path, birds, tiny_vit):
    root = tmp_path / "s"
    write_store(tiny_vit, birds, root, shard_size=16, batch_size=8, num_workers=0)
    other = ImageDataset(birds.records[:20], birds.classes, birds.concept_names)
    with pytest.raises(StoreError, match="another backbone, dataset or transform"):
        write_store(tiny_vit, other, root, batch_size=8, num_workers=0)


def test_one_writer_at_a_time(tmp_path, birds, tiny_vit):
    import fcntl

    root = tmp_path / "s"
    root.mkdir()
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StoreError, match="Another extraction"):
            write_store(tiny_vit, birds, root, batch_size=8, num_workers=0)
    finally:
        os.close(fd)


# -- a store from someone else ------------------------------------------------------------------
def _rewrite_shard(root: Path, i: int, tensors: dict, skipped=None):
    """Replace shard i with other tensors and make the manifest agree (size and hash), as a forger would."""
    from safetensors.torch import save

    m = json.loads((root / "manifest.json").read_text())
    e = m["shards"][str(i)]
    data = save(tensors, metadata={"skipped": json.dumps(skipped if skipped is not None else [])})
    (root / shard_name(i)).write_bytes(data)
    e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if "kept" in tensors:
        e["rows"] = len(tensors["kept"])
        e["skipped"] = 16 - e["rows"] if skipped is None else len(skipped)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def store_copy(tmp_path, birds, tiny_vit):
    root = tmp_path / "s"
    write_store(tiny_vit, birds, root, shard_size=16, batch_size=8, num_workers=0)
    return root


def _shard0(root):
    from safetensors.torch import load_file

    return load_file(str(root / shard_name(0)))


@pytest.mark.parametrize("change, message", [
    (lambda t: {**t, "embeddings": t["embeddings"].double()}, "must be F32"),
    (lambda t: {**t, "embeddings": t["embeddings"][:, :5].contiguous()}, "must be F32"),
    (lambda t: {**t, "embeddings": t["embeddings"].index_fill(0, torch.tensor([3]), float("nan"))}, "non-finite"),
    (lambda t: {**t, "labels": t["labels"] + 100}, "labels must lie"),
    (lambda t: {**t, "kept": t["kept"] + 1000}, "record indices"),
    (lambda t: {**t, "extra": torch.zeros(3)}, "exactly embeddings, labels and kept"),
])
def test_a_forged_shard_is_refused(store_copy, change, message):
    _rewrite_shard(store_copy, 0, change(_shard0(store_copy)))
    store = FeatureStore.open(store_copy)
    with pytest.raises(StoreError, match=message):
        store.read_shard(0)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"]["0"].update(file="../../etc/passwd"), "must be the file"),
    (lambda m: m["shards"].update({"99": m["shards"]["0"]}), "out of range"),
    (lambda m: m.update(dim=10**9), "'dim'"),
    (lambda m: m.update(dtype="F64"), "dtype"),
    (lambda m: m["shards"]["0"].update(rows=3), "accounts for"),
    (lambda m: m.update(format="something"), "not a feature store"),
    (lambda m: m.update(version=99), "version"),
])
def test_a_forged_manifest_is_refused(store_copy, edit, message):
    m = json.loads((store_copy / "manifest.json").read_text())
    edit(m)
    (store_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=message):
        FeatureStore.open(store_copy)


def test_a_linked_or_oversized_manifest_is_refused(store_copy, tmp_path):
    real = store_copy / "manifest.json"
    target = tmp_path / "elsewhere.json"
    target.write_bytes(real.read_bytes())
    real.unlink()
    real.symlink_to(target)
    with pytest.raises(StoreError):
        FeatureStore.open(store_copy)
    real.unlink()
    real.write_text("not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        FeatureStore.open(store_copy)


# -- the command line ---------------------------------------------------------------------------
def test_cli_extract_warms_the_cache_that_build_reads(tmp_path, birds, tiny_vit, reference, capsys, monkeypatch):
    from cbm_core.cli import main

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    manifest = Path(birds.records[0].path).parent.parent / "manifest.csv"
    torch.manual_seed(0)  # the CLI loads tiny-vit:random itself: the same seed gives the fixture's weights
    assert main(["extract", "--backbone", "tiny-vit:random", "--data", str(manifest), "--device", "cpu",
                 "--shard-size", "16", "--batch-size", "8", "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["engine"] == "inprocess" and report["shards"] == 5 and report["skipped"] == 2
    assert report["shards_written"] == 5 and report["encoded_rows"] == len(birds) - 2
    assert "skipped" in out.err and "broken.png" in out.err
    hit = extract_features(tiny_vit, birds)  # default cache dir: $CBM_CACHE_DIR/features
    assert hit.from_cache
    assert_same_features(hit, reference)
    # a second run finds everything done
    assert main(["extract", "--backbone", "tiny-vit:random", "--data", str(manifest), "--device", "cpu",
                 "--shard-size", "16", "--batch-size", "8", "--workers", "0", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["shards_reused"] == 5


def test_cli_build_streams_from_the_store_that_extract_wrote(tmp_path, birds, capsys, monkeypatch):
    """``build --stream`` trains from the store without loading it: the same bundle as a build that loads it
    whole (up to the chunked sums' rounding), the held-out 20 % read by row. Without a store it says how to
    write one; a recipe that cannot stream says which can."""
    from cbm_core import load_bundle
    from cbm_core.backbone import load_backbone
    from cbm_core.build import build_cbm
    from cbm_core.cli import main
    from cbm_core.errors import RecipeError

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    manifest = Path(birds.records[0].path).parent.parent / "manifest.csv"
    (tmp_path / "concepts.txt").write_text("red crown\nblue wing\nlong beak\nstriped tail\nwater\nland\n")
    build = ["build", "--backbone", "tiny-vit:random", "--data", str(manifest), "--concepts",
             str(tmp_path / "concepts.txt"), "--lam", "0.01", "--device", "cpu", "--quiet"]

    def run(*argv):
        torch.manual_seed(0)  # the CLI loads tiny-vit:random itself: the same seed, the same weights and key
        return main(list(argv))

    assert run(*build, "--stream", "--out", str(tmp_path / "none")) == 2
    err = capsys.readouterr().err
    assert "No feature store" in err and "cbm_core extract" in err and not (tmp_path / "none").exists()
    assert run("extract", "--backbone", "tiny-vit:random", "--data", str(manifest), "--device", "cpu",
               "--shard-size", "16", "--batch-size", "8", "--workers", "0", "--quiet") == 0
    capsys.readouterr()
    assert run(*build, "--stream", "--out", str(tmp_path / "streamed")) == 0
    assert run(*build, "--out", str(tmp_path / "loaded")) == 0
    streamed, loaded = load_bundle(tmp_path / "streamed"), load_bundle(tmp_path / "loaded")
    for key in ("n_train", "n_val", "skipped_images", "val_accuracy"):
        assert streamed.metrics[key] == loaded.metrics[key], key
    assert streamed.metrics["skipped_images"] == 2 and streamed.metrics["n_train"] + streamed.metrics["n_val"] == 70
    assert torch.equal(streamed.weight == 0, loaded.weight == 0)
    assert torch.allclose(streamed.weight, loaded.weight, atol=1e-4)
    assert torch.allclose(streamed.bias, loaded.bias, atol=1e-4)
    assert torch.allclose(streamed.stats.mean, loaded.stats.mean, atol=1e-5)
    torch.manual_seed(0)
    with pytest.raises(RecipeError, match="pcbm"):
        build_cbm(load_backbone("tiny-vit:random", device="cpu"), birds, recipe="labo", stream=True)
    shard = sorted((tmp_path / "cache").rglob("shard-000001.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-8] + b"damaged!")  # same size, another hash
    capsys.readouterr()
    assert run(*build, "--stream", "--out", str(tmp_path / "damaged")) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "extract` again" in err and "Traceback" not in err


def test_ray_engine_without_ray_says_how_to_install(monkeypatch, birds, tiny_vit, tmp_path):
    import builtins

    from cbm_core.errors import CBMError

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(CBMError, match="requirements-scale.txt"):
        extract_features(tiny_vit, birds, engine="ray", use_cache=False)


# -- recipes that train from the store ---------------------------------------------------------
@pytest.fixture(scope="module")
def train_store(tmp_path_factory, birds, tiny_vit):
    """The birds' features as a 5-shard store (16 records a shard) and in memory."""
    store = write_store(tiny_vit, birds, tmp_path_factory.mktemp("train") / "s", shard_size=16, batch_size=8,
                        num_workers=0)
    feats = store.load(birds)
    return FeatureStore.open(store.root), feats.embeddings, feats.labels, len(birds.classes)


def test_elastic_net_from_shards_takes_the_in_memory_steps(train_store):
    """Chunked full batch: every sum over rows is taken 10 rows at a time across 5 shards, so the
    gradients equal the in-memory ones up to float rounding (~1e-7). FISTA's momentum lets such
    differences grow over hundreds of steps, so the iterates are compared early (50 steps, 1e-6)
    and the converged fits at the solver's tolerance (the standardisation itself differs by ~1e-7:
    the store's statistics are float64 sums over shards)."""
    from cbm_core.recipes.elastic_net import fit_elastic_net, lambda_max, lipschitz
    from cbm_core.data.sources import MappedSource, column_stats

    store, X, y, C = train_store
    m = column_stats(store)
    # the recipes' heads see standardised scores; so does this test (a better-conditioned problem)
    Z = (X - X.mean(0)) / X.std(0, unbiased=False)
    source = MappedSource(store, lambda x: (x - m["mean"]) / m["std"], store.dim)
    assert abs(lipschitz(source, chunk_size=10) - lipschitz(Z)) < 1e-5 * lipschitz(Z)
    assert abs(lambda_max(source, y, C, 0.99, chunk_size=10) - lambda_max(Z, y, C, 0.99)) < 1e-6
    lam = 0.1 * lambda_max(Z, y, C, 0.99)
    step = 1.0 / lipschitz(Z)
    a = fit_elastic_net(Z, y, C, lam, max_iter=50, tol=0.0, step_size=step)
    b = fit_elastic_net(source, y, C, lam, max_iter=50, tol=0.0, step_size=step, chunk_size=10)
    assert a.n_iter == b.n_iter == 50
    assert (a.weight - b.weight).abs().max() < 5e-6 and (a.bias - b.bias).abs().max() < 5e-6
    assert abs(a.objective - b.objective) < 1e-6
    a = fit_elastic_net(Z, y, C, lam)
    b = fit_elastic_net(source, y, C, lam, chunk_size=10)
    assert a.converged and b.converged
    assert torch.equal(a.weight == 0, b.weight == 0)  # the same concepts per class
    assert (a.weight - b.weight).abs().max() < 1e-4 * a.weight.abs().max()
    assert abs(a.objective - b.objective) < 1e-6 * a.objective


def _concepts(dim, k=12, seed=1):
    from cbm_core.core.concepts import ConceptBank

    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    return ConceptBank(tuple(f"concept {i}" for i in range(k))), vectors


@pytest.mark.parametrize("proj_batch_size", [20, 50_000])  # mini-batches drawn with take(); one batch of all rows
def test_label_free_cbm_from_shards_matches_the_in_memory_fit(train_store, birds, proj_batch_size):
    from cbm_core.recipes.label_free import LabelFreeCBM

    store, X, y, C = train_store
    bank, vectors = _concepts(X.shape[1])

    def fit(features):
        return LabelFreeCBM(concepts=bank, concept_vectors=vectors, classes=birds.classes, backbone_spec="tiny-vit",
                            proj_steps=120, proj_batch_size=proj_batch_size, interpretability_cutoff=-1.0,
                            lam=0.01).fit(features, y)

    a, b = fit(X), fit(store)
    assert a.concepts_.names == b.concepts_.names and a.n_steps_ == b.n_steps_
    assert torch.allclose(a.projection_, b.projection_, atol=1e-5)
    assert torch.allclose(a.stats_.mean, b.stats_.mean, atol=1e-5)
    assert torch.allclose(a.stats_.std, b.stats_.std, atol=1e-5)
    assert torch.allclose(a.stats_.quantiles, b.stats_.quantiles, atol=1e-5)  # every row sampled: exact percentiles
    assert torch.allclose(a.coef_, b.coef_, atol=1e-4) and torch.allclose(a.intercept_, b.intercept_, atol=1e-4)
    assert a.model_.metrics["train_accuracy"] == pytest.approx(b.model_.metrics["train_accuracy"], abs=1e-6)
    assert torch.allclose(a.model_.predict_proba(X), b.model_.predict_proba(X), atol=1e-4)


def test_dn_cbm_sae_from_shards_matches_the_in_memory_fit(train_store, birds):
    from cbm_core.recipes.dn_cbm import DNCBM

    store, X, y, C = train_store
    words = tuple(f"word {i}" for i in range(40))
    _, vocab = _concepts(X.shape[1], k=len(words), seed=2)

    def fit(features):
        return DNCBM(vocabulary=words, vocab_vectors=vocab, classes=birds.classes, backbone_spec="tiny-vit",
                     expansion=2, sae_epochs=12, sae_batch_size=16, resample_every=4, lam=0.01).fit(features, y)

    a, b = fit(X), fit(store)
    sa, sb = a.sae_, b.sae_
    for name in ("encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias"):
        assert torch.allclose(getattr(sa, name), getattr(sb, name), atol=1e-5), name
    assert a.resampled_ == b.resampled_ and a.dead_latents_ == b.dead_latents_
    assert a.concepts_.names == b.concepts_.names
    assert abs(a.model_.recipe["sae"]["fvu_train"] - b.model_.recipe["sae"]["fvu_train"]) < 1e-5
    assert torch.allclose(a.coef_, b.coef_, atol=1e-4)
    assert torch.allclose(a.model_.predict_proba(X), b.model_.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("residual", [False, True])  # PCBM, PCBM-h (its residual head streamed with a held offset)
def test_pcbm_from_shards_matches_the_in_memory_fit(train_store, birds, residual):
    from cbm_core.recipes.pcbm import PCBM

    store, X, y, C = train_store
    bank, vectors = _concepts(X.shape[1])

    def recipe():
        return PCBM(concepts=bank, concept_vectors=vectors, classes=birds.classes, backbone_spec="tiny-vit", lam=0.01,
                    residual=residual)

    a, b = recipe().fit(X, y), recipe().fit(store, store.labels)
    assert torch.allclose(a.stats_.mean, b.stats_.mean, atol=1e-5)
    assert torch.allclose(a.stats_.std, b.stats_.std, atol=1e-5)
    assert torch.equal(a.coef_ == 0, b.coef_ == 0)  # the same concepts per class
    assert torch.allclose(a.coef_, b.coef_, atol=1e-4) and torch.allclose(a.intercept_, b.intercept_, atol=1e-4)
    assert (a.residual_coef_ is None) == (b.residual_coef_ is None) == (not residual)
    if residual:
        assert torch.allclose(a.residual_coef_, b.residual_coef_, atol=1e-4)
    assert a.model_.metrics["train_accuracy"] == pytest.approx(b.model_.metrics["train_accuracy"], abs=1e-6)
    assert torch.allclose(a.model_.predict_proba(X), b.model_.predict_proba(X), atol=1e-4)
    # the sparsity path streams too, validation included
    pa, pb = recipe().path(X, y, X, y, n_points=4), recipe().path(store, store.labels, store, store.labels, n_points=4)
    assert [p.nec for p in pa] == [p.nec for p in pb]
    assert [p.val_accuracy for p in pa] == pytest.approx([p.val_accuracy for p in pb], abs=1e-6)


def test_a_store_of_many_shards_keeps_few_files_open_and_reads_the_same_rows(tmp_path, birds, tiny_vit):
    """Rows taken across 72 one-image shards, none cached in memory: at most MAX_OPEN_MAPS memory maps (file
    handles) stay open, and every row read equals the in-memory features."""
    from cbm_core.data.store import MAX_OPEN_MAPS

    write_store(tiny_vit, birds, tmp_path / "s", shard_size=1, batch_size=1, num_workers=0)
    store = FeatureStore.open(tmp_path / "s", cache_bytes=0)
    assert store.n_shards == len(birds) > MAX_OPEN_MAPS
    every = torch.arange(len(store))
    rows = torch.cat([store.take(every.flip(0)), store.take(every)])
    assert len(store._maps) <= MAX_OPEN_MAPS
    whole = store.load(birds).embeddings
    assert torch.equal(rows, torch.cat([whole.flip(0), whole]))


def test_nonsense_store_options_are_refused_before_anything_is_written(tmp_path, birds, tiny_vit, capsys, monkeypatch):
    from cbm_core.cli import main

    for kwargs, message in (({"shard_size": 20_000_000}, "shard_size"), ({"shard_size": 0}, "shard_size"),
                            ({"batch_size": -1}, "batch_size"), ({"num_workers": -1}, "num_workers")):
        with pytest.raises(StoreError, match=message):
            write_store(tiny_vit, birds, tmp_path / "s", **kwargs)
        assert not (tmp_path / "s" / "manifest.json").exists()
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    manifest = Path(birds.records[0].path).parent.parent / "manifest.csv"
    assert main(["extract", "--backbone", "tiny-vit:random", "--data", str(manifest), "--device", "cpu",
                 "--workers", "-1", "--quiet"]) == 2
    assert "num_workers" in capsys.readouterr().err

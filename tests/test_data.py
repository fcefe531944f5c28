import os

import pytest
import torch

from cbm_core.data.datasets import ImageDataset
from cbm_core.data.features import extract_features
from cbm_core.errors import DatasetError
from helpers import shape_image, write_class_folder


def test_folder_dataset_with_bad_files_skips_and_reports(tmp_path, tiny_vit):
    root = write_class_folder(tmp_path / "data", per_class=4)
    (root / "red" / "zero.png").write_bytes(b"")
    (root / "blue" / "text.jpg").write_text("hello")
    good = (root / "green" / "000.png").read_bytes()
    (root / "green" / "cut.png").write_bytes(good[: len(good) // 2])
    ds = ImageDataset.from_folder(root)
    assert ds.classes == ("blue", "green", "red") and len(ds) == 15
    calls = []
    feats = extract_features(tiny_vit, ds, cache_dir=tmp_path / "cache", progress=lambda d, t: calls.append((d, t)))
    assert feats.embeddings.shape == (12, tiny_vit.embed_dim)
    skipped = {os.path.basename(p): why for p, why in feats.skipped}
    assert set(skipped) == {"zero.png", "text.jpg", "cut.png"}
    assert "0 bytes" in skipped["zero.png"] and "not an image" in skipped["text.jpg"]
    assert calls[-1] == (15, 15)
    kept_labels = torch.tensor([ds.records[i].label for i in feats.kept])
    assert torch.equal(kept_labels, feats.labels)


def test_cache_hits_and_invalidates_when_a_file_changes(tmp_path, tiny_vit):
    root = write_class_folder(tmp_path / "data", per_class=3)
    ds = ImageDataset.from_folder(root)
    first = extract_features(tiny_vit, ds, cache_dir=tmp_path / "c")
    second = extract_features(tiny_vit, ds, cache_dir=tmp_path / "c")
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.embeddings, second.embeddings)
    shape_image("red", seed=999).save(root / "red" / "000.png")
    third = extract_features(tiny_vit, ImageDataset.from_folder(root), cache_dir=tmp_path / "c")
    assert not third.from_cache and not torch.equal(third.embeddings, first.embeddings)


def test_damaged_cache_entry_is_recomputed(tmp_path, tiny_vit):
    root = write_class_folder(tmp_path / "data", per_class=2)
    ds = ImageDataset.from_folder(root)
    first = extract_features(tiny_vit, ds, cache_dir=tmp_path / "c")
    for f in (tmp_path / "c").iterdir():
        f.write_bytes(b"junk")
    again = extract_features(tiny_vit, ds, cache_dir=tmp_path / "c")
    assert not again.from_cache and torch.equal(again.embeddings, first.embeddings)


def test_csv_manifest_with_concepts_groups_and_splits(tmp_path, tiny_vit):
    (tmp_path / "img").mkdir()
    rows = ["path,label,red_thing,round,group,split"]
    for i, colour in enumerate(["red", "blue", "red", "blue"]):
        shape_image(colour, i).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{colour},{int(colour == 'red')},1,{colour}_{i % 2},{'train' if i < 3 else 'test'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = ImageDataset.from_csv(tmp_path / "m.csv")
    assert ds.concept_names == ("red_thing", "round") and ds.classes == ("blue", "red")
    feats = extract_features(tiny_vit, ds, use_cache=False)
    assert feats.groups == ("red_0", "blue_1", "red_0", "blue_1")
    assert feats.concept_labels.tolist() == [[1, 1], [0, 1], [1, 1], [0, 1]]
    assert len(ImageDataset.from_csv(tmp_path / "m.csv", split="train")) == 3


def test_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(DatasetError, match="needs a 'path' column"):
        ImageDataset.from_csv(tmp_path / "a.csv")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageDataset.from_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        ImageDataset.from_folder(tmp_path / "flat")


def test_any_torch_dataset(tiny_vit):
    class Colours(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            if i == 4:
                raise OSError("disk hiccup")
            return shape_image(["red", "blue"][i % 2], i), i % 2

    feats = extract_features(tiny_vit, Colours())
    assert len(feats.labels) == 5 and feats.skipped == (("item 4", "OSError: disk hiccup"),)


def test_workers_give_the_same_features(tmp_path, tiny_vit):
    ds = ImageDataset.from_folder(write_class_folder(tmp_path / "data", per_class=4))
    a = extract_features(tiny_vit, ds, use_cache=False, num_workers=0, batch_size=5)
    b = extract_features(tiny_vit, ds, use_cache=False, num_workers=2, batch_size=5)
    torch.testing.assert_close(a.embeddings, b.embeddings)


def test_uint8_loading_gives_the_features_of_the_backbones_own_preprocessing(tmp_path, tiny_vit):
    # Workers ship uint8 and the batch is normalised on the device; the pixels must be open_clip's.
    from cbm_core.data.images import decode_image

    root = write_class_folder(tmp_path / "data", per_class=3)
    (root / "red" / "empty.png").write_bytes(b"")  # skipped, and the rest still line up
    shape_image("blue", 99, size=70).save(root / "blue" / "wide.png")  # resized and cropped on the way
    ds = ImageDataset.from_folder(root)
    feats = extract_features(tiny_vit, ds, use_cache=False, num_workers=0, batch_size=4)
    reference = tiny_vit.encode_images(
        tiny_vit.preprocess_images([decode_image(ds.records[i].path) for i in feats.kept])).embeddings
    torch.testing.assert_close(feats.embeddings, reference, atol=1e-5, rtol=1e-4)
    tensors = extract_features(tiny_vit, TensorItems(tiny_vit, [decode_image(ds.records[i].path) for i in feats.kept]))
    torch.testing.assert_close(tensors.embeddings, reference, atol=1e-5, rtol=1e-4)


class TensorItems(torch.utils.data.Dataset):
    """A torch Dataset that hands out already preprocessed float tensors."""

    def __init__(self, backbone, images):
        self.pixels = backbone.preprocess_images(images)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return self.pixels[i], 0

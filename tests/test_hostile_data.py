"""Careless and hostile datasets: every one is refused with a DatasetError naming the folder, the
line or the column, before any image is encoded."""
import os
from pathlib import Path

import pytest

from cbm_core.data.datasets import ImageDataset
from cbm_core.errors import DatasetError
from helpers import shape_image, write_class_folder


def csv_world(tmp_path: Path, text: str | bytes, images=("a.png", "b.png")) -> Path:
    """A manifest beside a folder of small images; ``text`` is written as is."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, name in enumerate(images):
        shape_image("red", i).save(tmp_path / "img" / name)
    path = tmp_path / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- folders --------------------------------------------------------------------------------------
def test_an_empty_class_folder_is_named_not_dropped(tmp_path):
    root = write_class_folder(tmp_path / "data", per_class=2)
    (root / "grey").mkdir()
    (root / "grey" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DatasetError, match=r"Class folder '.*grey' has no images \(PNG, JPEG.*remove the folder"):
        ImageDataset.from_folder(root)


@pytest.mark.parametrize("bad", ["red\x07", "blue\u202egnp.exe", "\x1b[31mgreen"])
def test_class_folder_names_with_control_characters_are_refused(tmp_path, bad):
    root = write_class_folder(tmp_path / "data", per_class=1)
    (root / "red").rename(root / bad)
    with pytest.raises(DatasetError, match=r"control character U\+"):
        ImageDataset.from_folder(root)


def test_a_file_given_as_the_dataset_folder_says_what_to_give(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        ImageDataset.from_folder(tmp_path / "data.txt")


# -- CSV manifests --------------------------------------------------------------------------------
def test_a_non_utf8_manifest_names_the_line(tmp_path):
    m = csv_world(tmp_path, "path,label\nimg/a.png,cafe\nimg/b.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"'m.csv' is not UTF-8 text \(line 3 has the byte 0xe9\).*CSV UTF-8"):
        ImageDataset.from_csv(m)


def test_a_ragged_row_names_its_line(tmp_path):
    m = csv_world(tmp_path, "path,label\nimg/a.png,red\n\nimg/b.png,red,extra\n")
    with pytest.raises(DatasetError, match=r"'m.csv', line 4: 3 cells, but the header has 2"):
        ImageDataset.from_csv(m)
    m = csv_world(tmp_path, "path,label,group\nimg/a.png,red\n")
    with pytest.raises(DatasetError, match=r"line 2: 2 cells, but the header has 3"):
        ImageDataset.from_csv(m)


@pytest.mark.parametrize("row, message", [
    (",red", r"line 3: the 'path' cell is empty"),
    ("img/b.png,", r"line 3: the 'label' cell is empty"),
    ("img/b.png,   ", r"line 3: the 'label' cell is empty"),
    ("img/b.png,red\x1b[0m", r"line 3: label .* control character U\+001B"),
    ("img/b.png,\u202edecoy", r"line 3: label .* control character U\+202E"),
    ("img/b\x00.png,red", r"line 3: path .* control character U\+0000"),
])
def test_missing_empty_and_control_character_cells_name_the_line(tmp_path, row, message):
    m = csv_world(tmp_path, f"path,label\nimg/a.png,red\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        ImageDataset.from_csv(m)


def test_duplicate_column_names_are_refused(tmp_path):
    m = csv_world(tmp_path, "path,label,label\nimg/a.png,red,blue\n")
    with pytest.raises(DatasetError, match="duplicate column name: 'label'"):
        ImageDataset.from_csv(m)


def test_paths_leaving_the_manifests_folder_are_refused_unless_allowed(tmp_path):
    outside = tmp_path / "outside.png"
    shape_image("blue", 1).save(outside)
    (tmp_path / "data").mkdir()
    for cell, how in (("../outside.png", "leads outside"), (str(outside), "is absolute"),
                      ("img/../../outside.png", "leads outside")):
        m = csv_world(tmp_path / "data", f"path,label\nimg/a.png,red\n{cell},blue\n")
        with pytest.raises(DatasetError, match=rf"line 3: path '.*' {how}.*--allow-outside-paths"):
            ImageDataset.from_csv(m)
        ds = ImageDataset.from_csv(m, allow_outside=True)
        assert ds.records[1].path == str(outside.resolve())


def test_a_link_out_of_the_manifests_folder_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    m = csv_world(tmp_path / "data", "path,label\nimg/a.png,red\nimg/link.png,red\n")
    (tmp_path / "data" / "img" / "link.png").symlink_to("/etc/hostname")
    with pytest.raises(DatasetError, match="line 3: path 'img/link.png' leads outside"):
        ImageDataset.from_csv(m)


def test_concept_columns_are_checked_by_name_and_value(tmp_path):
    m = csv_world(tmp_path, "path,label,striped\nimg/a.png,red,1\nimg/b.png,red,yes\n")
    with pytest.raises(DatasetError, match="no concept column 'spotted'"):
        ImageDataset.from_csv(m, concept_columns=["spotted"])
    with pytest.raises(DatasetError, match=r"line 3: concept column 'striped' holds 'yes'"):
        ImageDataset.from_csv(m, concept_columns=["striped"])
    assert ImageDataset.from_csv(m).concept_names == ()  # not all 0/1: not detected as a concept column


def test_an_empty_concept_cell_means_not_labelled(tmp_path, tiny_vit):
    """Experts rarely label every concept of every image: an empty cell is unknown (NaN), not 0,
    and the column is still a concept column; a column that is empty throughout is not one."""
    import math

    from cbm_core import extract_features

    m = csv_world(tmp_path, "path,label,striped,spotted,notes\nimg/a.png,red,1,,\nimg/b.png,red, ,0,\n")
    ds = ImageDataset.from_csv(m)
    assert ds.concept_names == ("striped", "spotted")
    assert ds.records[0].concepts == (1, None) and ds.records[1].concepts == (None, 0)
    labels = extract_features(tiny_vit, ds, use_cache=False).concept_labels
    assert labels[0, 0] == 1 and labels[1, 1] == 0 and math.isnan(labels[0, 1]) and math.isnan(labels[1, 0])


def test_a_clean_manifest_still_loads_with_bom_blank_lines_and_padded_labels(tmp_path):
    m = csv_world(tmp_path, "\ufeffpath,label\r\nimg/a.png, red \r\n\r\nimg/b.png,blue\r\n")
    ds = ImageDataset.from_csv(m)
    assert ds.classes == ("blue", "red") and [r.label for r in ds.records] == [1, 0]
    assert all(os.path.isabs(r.path) and Path(r.path).is_file() for r in ds.records)


def test_a_manifest_that_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(DatasetError, match="not a regular file"):
        ImageDataset.from_csv(tmp_path / "pipe.csv")
    with pytest.raises(DatasetError, match="has no rows"):
        ImageDataset.from_csv(csv_world(tmp_path, "path,label\n\n"))

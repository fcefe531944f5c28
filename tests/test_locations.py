"""A CSV's per-image part locations (loc:<concept> columns) and the pointing game they drive."""
import numpy as np
import pytest

from cbm_core.explain.concept_metrics import Annotation, dataset_annotations, default_tolerance
from cbm_core.data.datasets import ImageDataset
from cbm_core.errors import DatasetError
from helpers import shape_image


def write_manifest(tmp_path, cells):
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = ["path,label,red_thing,loc:red thing,loc:round"]
    for i, (a, b) in enumerate(cells):
        shape_image("red", i).save(tmp_path / "img" / f"{i}.png")
        rows.append(f'img/{i}.png,{"red" if i % 2 else "blue"},1,{a},{b}')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_location_columns_are_read_per_image_and_kept_out_of_the_concept_columns(tmp_path):
    ds = ImageDataset.from_csv(write_manifest(tmp_path, [('"12,30"', "1 2 40 50"), ("", "3;4"), ('"7,8"', "")]))
    assert ds.concept_names == ("red_thing",) and ds.location_names == ("red thing", "round")
    assert ds.records[0].locations == (("red thing", (12.0, 30.0)), ("round", (1.0, 2.0, 40.0, 50.0)))
    assert ds.records[1].locations == (("round", (3.0, 4.0)),)
    assert ds.records[2].locations == (("red thing", (7.0, 8.0)),)
    found = {name: ann for name, _, ann in dataset_annotations(ds)}
    assert found["0.png"]["round"].kind == "box" and found["0.png"]["red thing"].kind == "point"
    assert set(found["1.png"]) == {"round"}


@pytest.mark.parametrize("cell,message", [
    ("12", "x,y for a point"), ("1 2 3", "x,y for a point"), ("a,b", "x,y for a point"), ("nan 3", "x,y for a point"),
    ("-1 3", "negative"), ("10 10 5 20", "second corner"),
])
def test_bad_location_cells_are_refused_with_the_line_and_column(tmp_path, cell, message):
    path = write_manifest(tmp_path, [("1 1", "2 2"), (f'"{cell}"', "")])
    with pytest.raises(DatasetError, match=message) as err:
        ImageDataset.from_csv(path)
    assert "line 3" in str(err.value) and "loc:red thing" in str(err.value)


def test_a_location_column_needs_a_concept_name(tmp_path):
    (tmp_path / "img").mkdir()
    shape_image("red", 0).save(tmp_path / "img" / "0.png")
    (tmp_path / "m.csv").write_text("path,label,loc:\nimg/0.png,red,1 2\n")
    with pytest.raises(DatasetError, match="concept name is empty"):
        ImageDataset.from_csv(tmp_path / "m.csv")


def test_annotation_hits_and_chance():
    box = Annotation.from_coords((10, 20, 19, 29))  # a 10 x 10 box in a 100 x 50 image
    assert box.hit(15, 25, (1.0, 1.0), 0) and not box.hit(25, 25, (1.0, 1.0), 0)
    assert box.hit(30, 50, (2.0, 2.0), 0)  # a map drawn at twice the size: pixel (30, 50) is image (15.25, 25.25)
    assert box.chance((100, 50), 0) == pytest.approx(100 / 5000)
    point = Annotation.from_coords((50, 25))
    assert point.hit(53, 25, (1.0, 1.0), 4) and not point.hit(56, 25, (1.0, 1.0), 4)
    assert point.chance((100, 50), 4) == pytest.approx(np.pi * 16 / 5000)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 5:7] = True
    ann = Annotation("mask", mask=mask)
    assert ann.hit(5, 2, (1.0, 1.0), 0) and not ann.hit(1, 1, (1.0, 1.0), 0) and ann.chance((8, 8), 0) == 4 / 64
    assert default_tolerance((400, 300)) == 15.0 and default_tolerance((20, 20)) == 2.0
    with pytest.raises(ValueError, match="x,y"):
        Annotation.from_coords((1, 2, 3))

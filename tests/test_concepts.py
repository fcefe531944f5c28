import json

import pytest
import torch

from cbm_core.core.concepts import ConceptBank
from cbm_core.errors import ConceptError


def test_loaders_keep_provenance(tmp_path):
    (tmp_path / "c.txt").write_text("# wings\nstriped wings\n\nred crown\n")
    (tmp_path / "c.csv").write_text("concept,source\nstriped wings,expert\nred crown,\n")
    (tmp_path / "c.json").write_text(json.dumps({"concepts": ["striped wings", {"name": "red crown", "source": "gpt"}]}))
    txt = ConceptBank.from_file(tmp_path / "c.txt")
    assert txt.names == ("striped wings", "red crown") and txt.sources == ("file:c.txt",) * 2
    csv_ = ConceptBank.from_file(tmp_path / "c.csv")
    assert csv_.sources == ("expert", "file:c.csv")
    js = ConceptBank.from_file(tmp_path / "c.json")
    assert js.sources == ("file:c.json", "gpt")
    assert ConceptBank.from_records(js.to_records()) == js


def test_empty_concept_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n# nothing here\n")
    with pytest.raises(ConceptError, match="empty.txt.*no concepts"):
        ConceptBank.from_file(tmp_path / "empty.txt")
    with pytest.raises(ConceptError, match="empty"):
        ConceptBank.from_list([])


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConceptError) as err:
        ConceptBank.from_list(["Red Crown", "red  crown", "", "x" * 200])
    text = str(err.value)
    assert "duplicates" in text and "'red  crown'" in text and "blank entries at positions 3" in text
    assert "longer than 120" in text


def test_csv_without_concept_column(tmp_path):
    (tmp_path / "bad.csv").write_text("name\nred\n")
    with pytest.raises(ConceptError, match="'concept' column"):
        ConceptBank.from_file(tmp_path / "bad.csv")


def test_unknown_concept_lookup_names_it():
    with pytest.raises(ConceptError, match="Unknown concept 'blue'"):
        ConceptBank.from_list(["red"]).index("blue")


def test_near_duplicate_filter_reports_why():
    bank = ConceptBank.from_list(["a", "b", "c"])
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]), dim=1)
    kept, vectors, report = bank.filter_near_duplicates(v, threshold=0.9)
    assert kept.names == ("a", "c") and vectors.shape == (2, 2)
    assert report.removed[0][0] == "b" and "near-duplicate of 'a'" in report.removed[0][1]
    assert list(report.to_frame().columns) == ["concept", "reason"]


def test_class_similarity_filter(tiny_vit):
    bank = ConceptBank.from_list(["cardinal", "red crown", "long tail"])
    vecs = bank.embed(tiny_vit)
    classes = ["cardinal", "jay"]
    kept, _, report = bank.filter_class_similar(vecs, tiny_vit.embed_prompts(classes), classes, threshold=0.999)
    assert "cardinal" not in kept.names and report.removed[0] == ("cardinal", "is a class name")


def test_length_filter():
    kept, report = ConceptBank.from_list(["short", "a very long concept description here"]).filter_length(30)
    assert kept.names == ("short",) and len(report) == 1

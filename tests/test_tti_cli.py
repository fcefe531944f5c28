"""The command line: intervention curves, adaptation, and what `info` says about a supervised bundle —
on the demo's shipped features (nothing is encoded)."""
import json

from cbm_core import load_bundle
from cbm_core.cli import main as cli_main
from cbm_core.demo.paths import DEMO_BUNDLE
from cbm_core.demo.shifted import SUPERVISED_BUNDLE


def test_intervene_curve_prints_one_column_per_policy(tmp_path, capsys):
    out = tmp_path / "curves.json"
    assert cli_main(["intervene-curve", "--bundle", str(SUPERVISED_BUNDLE), "--data", "demo-shifted:test",
                     "--policy", "random", "--policy", "expected_change", "--max-answers", "3", "--propagate",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random" in text and "expected_change" in text and len(text.strip().splitlines()) == 5
    curves = json.loads(out.read_text())["curves"]
    assert [c["policy"] for c in curves] == ["random", "expected_change"] and curves[0]["propagated"]
    assert all(len(c["accuracy"]) == 4 for c in curves)
    assert curves[1]["accuracy"][3] > curves[1]["accuracy"][0], "three true answers help on the shifted birds"


def test_intervene_curve_refuses_a_model_without_concept_probabilities(capsys):
    assert cli_main(["intervene-curve", "--bundle", str(DEMO_BUNDLE), "--data", "demo:test"]) == 2
    assert "concept-supervised bundle" in capsys.readouterr().err


def test_adapt_saves_a_bundle_with_an_adapt_entry(tmp_path, capsys):
    assert cli_main(["adapt", "--bundle", str(DEMO_BUNDLE), "--target", "demo-shifted:val", "--per-class", "4",
                     "--source", "demo:val", "--test", "demo-shifted:test", "--out", str(tmp_path / "adapted")]) == 0
    text = capsys.readouterr().out
    assert "from 32 labelled target images" in text and "held-out target data" in text
    entry = load_bundle(tmp_path / "adapted").edit_log[-1]
    assert entry["op"] == "adapt" and entry["n_images"] == 32 and (entry["mask"] or entry["amplify"])


def test_info_lists_concept_auroc_and_summarises_the_dependencies(capsys):
    assert cli_main(["info", "--bundle", str(SUPERVISED_BUNDLE)]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["recipe"]["concept_dependencies"] == "class model over 26 concepts"
    assert "concept AUROC" in captured.err and "red eye" in captured.err

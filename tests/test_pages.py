"""Every page with Streamlit's AppTest, on the shipped demo bundle: the numbers shown are the engine's."""
import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from cbm_core import Intervention, Pipeline, compare, prune_concepts
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def page(name: str) -> AppTest:
    """The app, opened on one page (app.py's navigation and sidebar included)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page(f"pages/{name}.py")
    return at


@pytest.fixture(scope="module")
def engine():
    return Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")


def sample(name_part: str) -> Path:
    return next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if name_part in p.name)


def test_app_starts_with_the_demo_and_its_sidebar():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value == "Toy Birds demo"
    assert any("8 classes" in c.value for c in at.sidebar.caption)


def test_inspect_shows_the_engines_prediction_for_a_demo_bird(engine):
    at = page("inspect").run()
    assert not at.exception
    at.multiselect(key="inspect_samples").set_value(["azure diver on land"]).run()
    assert not at.exception, at.exception
    exp = engine.explain(str(sample("azure_diver_on_land")))
    pred = exp.class_names[int(exp.predicted[0])]
    headline = [m.value for m in at.markdown if m.value.startswith("### Predicted")][0]
    assert pred in headline and f"{float(exp.probs[0].max()):.1%}" in headline
    assert len(at.image) >= 4  # the image plus three saliency overlays


def test_inspect_upload_a_good_and_a_corrupt_image(engine):
    at = page("inspect").run()
    good = sample("golden_gull_on_water").read_bytes()
    uploader = at.file_uploader(key="inspect_uploads")
    uploader.upload("gull.png", good, "image/png").upload("broken.png", b"\x89PNG\r\n\x1a\n not really", "image/png").run()
    assert not at.exception, at.exception
    assert any("broken.png" in e.value for e in at.error)
    assert "broken.png" not in at.session_state["images"] and "gull.png" in at.session_state["images"]
    exp = engine.explain(good)
    headline = [m.value for m in at.markdown if m.value.startswith("### Predicted")][0]
    assert exp.class_names[int(exp.predicted[0])] in headline


def live_data(at) -> dict:
    """The data the Intervene page hands its live panel (the browser component)."""
    panel = [e for e in at.get("bidi_component") if e.key == "live_panel"]
    assert len(panel) == 1
    return json.loads(panel[0].proto.json)


def test_intervene_switching_a_concept_off_changes_the_prediction_exactly_as_the_engine_says(engine):
    at = page("intervene")
    at.session_state["images"] = {"diver on land": sample("azure_diver_on_land").read_bytes()}
    at.run()
    assert not at.exception, at.exception
    data = sample("azure_diver_on_land").read_bytes()
    before = engine.explain(data)
    top = before.to_frame(0).concept[0]  # the concept that matters most: listed first
    shown = live_data(at)
    assert shown["concepts"][0] == top and shown["ack"] == 0
    assert torch.allclose(torch.tensor(shown["original_probs"]), before.probs[0], atol=1e-6)

    # What the browser sends when the user switches the concept off (live_panel.js, "edit").
    at.session_state["live_panel"] = {"edit": {"seq": 1, "settings": {top: {"off": True}}}}
    at.run()
    assert not at.exception, at.exception
    after = engine.explain(data, Intervention().ablate(top))
    assert at.session_state["history"][-1] == Intervention().ablate(top).changes
    assert any(f"switch off '{top}'" in c.value for c in at.caption)
    shown = live_data(at)
    assert shown["ack"] == 1 and shown["off"][0] is True
    # The panel's own arithmetic (HeadSlice, mirrored by live_panel.js) gives the engine's probabilities.
    logits = torch.tensor(shown["base"]) + torch.tensor(shown["weight"]) @ torch.tensor(shown["z"])
    assert torch.allclose(logits.softmax(-1), after.probs[0], atol=1e-5)
    at.run()  # the same edit again (a plain rerun) is not recorded twice
    assert len(at.session_state["history"]) == 2

    at.button[0].click().run()  # undo
    assert at.session_state["history_pos"] == 0 and live_data(at)["off"][0] is False


def test_edit_preview_shows_the_engines_numbers():
    at = page("edit").run()
    assert not at.exception, at.exception
    model = at.session_state["model"]
    val = load_demo_features("val")
    proposal = prune_concepts(model, [c for c in model.concepts.names if "background" in c]).model
    table = compare(model, proposal, val.embeddings, val.labels, val.groups)
    worst = table[table.metric == "worst-group accuracy"].iloc[0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Worst-group accuracy"] == f"{worst.after:.1%}"
    assert metrics["Accuracy"] == f"{table.iloc[0].after:.1%}"
    at.button[0].click().run()  # apply
    assert len(at.session_state["model"].edit_log) == 1


def test_evaluate_page_matches_the_engine():
    at = page("evaluate").run()
    assert not at.exception, at.exception
    from cbm_core import evaluate

    model = at.session_state["model"]
    test = load_demo_features("test")
    m = evaluate(model, test.embeddings, test.labels, test.groups)
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["Accuracy"] == f"{m.accuracy:.1%}" and metrics["Worst-group accuracy"] == f"{m.worst_group:.1%}"


def test_build_page_validates_concepts_before_building():
    at = page("build").run()
    assert not at.exception, at.exception
    assert any("valid concepts" in c.value for c in at.caption)


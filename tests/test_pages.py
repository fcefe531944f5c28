"""Every page with Streamlit's AppTest, on the shipped demo bundle: the numbers shown are the engine's."""
import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from cbm_core import Intervention, Pipeline, compare, concept_directions, cooccurrence_warnings, prune_concepts
from cbm_core.explain.wording import ABSENT_FOR
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features
from ui.common import STORY_BIRD

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def page(name: str, timeout: float = TIMEOUT) -> AppTest:
    """The app, opened on one page (app.py's navigation and sidebar included)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
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
    # Saliency for the three concepts that push hardest for the prediction, each with its direction.
    maps = component_data(at, "saliency_maps")["maps"]
    rows = concept_directions(exp, 0)
    assert [m["concept"] for m in maps] == list(rows[rows.contribution > 0].concept[:3])
    for m in maps:
        row = rows.set_index("concept").loc[m["concept"]]
        assert m["present"] == bool(row.present) and m["layer"].startswith("data:image/png;base64,")
        assert m["caption"].startswith(f"{'present' if row.present else 'absent'} (p{row.percentile:.0f}) · pushes for {pred}")


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


def test_clear_images_clears_uploads_and_demo_picks_too():
    """Uploads stay listed in the uploader and picks in the multiselect; neither comes back after a clear."""
    at = page("inspect").run()
    at.multiselect(key="inspect_samples").set_value(["azure diver on water"]).run()
    at.file_uploader(key="inspect_uploads").upload("gull.png", sample("golden_gull_on_water").read_bytes(), "image/png").run()
    assert {"azure diver on water", "gull.png"} <= set(at.session_state["images"])
    next(b for b in at.button if b.label == "Clear images").click().run()
    assert not at.exception, at.exception
    assert not at.session_state["images"] and at.multiselect(key="inspect_samples").value == []
    at.run()
    assert not at.session_state["images"]
    at.multiselect(key="inspect_samples").set_value(["azure diver on land"]).run()  # the page works on after a clear
    assert list(at.session_state["images"]) == ["azure diver on land"]


def component_data(at, key: str) -> dict:
    """The data a page hands one of its browser components."""
    found = [e for e in at.get("bidi_component") if e.key == key]
    assert len(found) == 1
    return json.loads(found[0].proto.json)


def live_data(at) -> dict:
    """The data the Intervene page hands its live panel (the browser component)."""
    return component_data(at, "live_panel")


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
    apply_button(at).click().run()
    assert len(at.session_state["model"].edit_log) == 1


def apply_button(at):
    return next(b for b in at.button if b.label.startswith("Apply this edit"))


def test_an_applied_edit_leaves_the_proposal_and_cannot_be_applied_twice():
    at = page("edit").run()
    background = at.multiselect(key="prune_concepts").value  # the demo suggests the background concepts
    assert background and all("background" in c for c in background) and not apply_button(at).disabled
    apply_button(at).click().run()
    assert not at.exception, at.exception
    assert at.multiselect(key="prune_concepts").value == []  # nothing is left "proposed"
    assert apply_button(at).disabled
    assert any(s.value.startswith("Edit applied: changes ") for s in at.success)
    # Proposing the same prune again: it would change nothing, so it cannot be applied (or logged) twice.
    at.multiselect(key="prune_concepts").set_value(background).run()
    assert any("changes nothing" in i.value for i in at.info) and apply_button(at).disabled
    assert not at.metric  # no "+0.0 pts" preview for an edit that does nothing
    assert len(at.session_state["model"].edit_log) == 1
    log = [e for e in at.dataframe if "edit" in getattr(e.value, "columns", [])]
    assert len(log) == 1 and log[0].value["edit"].tolist() == ["prune"]


def test_evaluate_page_matches_the_engine():
    at = page("evaluate").run()
    assert not at.exception, at.exception
    from cbm_core import evaluate

    model = at.session_state["model"]
    test = load_demo_features("test")
    m = evaluate(model, test.embeddings, test.labels, test.groups)
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["Accuracy"] == f"{m.accuracy:.1%}" and metrics["Worst-group accuracy"] == f"{m.worst_group:.1%}"
    # The browser filters the pairs above 0.80 as its slider moves (|correlation| > threshold, as in
    # correlation_panel.js): at every threshold that is the engine's own table.
    pairs = component_data(at, "correlated_pairs")
    assert pairs["lowest"] == 0.80 and pairs["threshold"] == 0.95
    for threshold in (0.80, 0.85, 0.95, 0.99):
        want = cooccurrence_warnings(model, test.embeddings, threshold)
        kept = [(a, b) for a, b, c in pairs["pairs"] if abs(c) > threshold]
        assert kept == list(zip(want.concept_a, want.concept_b))


def test_build_page_validates_concepts_before_building():
    at = page("build").run()
    assert not at.exception, at.exception
    assert any("valid concepts" in c.value for c in at.caption)



def widget(elements, key: str):
    """A widget by its key, looked up among the elements drawn (``at.radio(key=...)`` asks the session
    state, which forgets a widget's key after a page switch)."""
    return next(e for e in elements if e.key == key)


def story_bytes() -> bytes:
    return sample(STORY_BIRD.replace(" ", "_")).read_bytes()


def test_inspect_opens_on_the_story_bird_and_says_which_way_each_concept_points(engine):
    at = page("inspect").run()
    assert not at.exception, at.exception
    assert list(at.session_state["images"]) == [STORY_BIRD]  # not an empty page
    exp = engine.explain(story_bytes())
    rows = concept_directions(exp, 0)
    # The story the README tells: the model uses the ABSENCE of water as evidence for azure finch.
    water = rows.set_index("concept").loc["water background"]
    assert exp.class_names[int(exp.predicted[0])] == "azure finch" and water.direction == ABSENT_FOR
    charts = " ".join(h.proto.body for h in at.get("html"))
    for r in rows[rows.contribution != 0].head(10).itertuples():  # every bar of the chart, in words
        state, way = r.direction.split(", pushing ")
        assert f'{r.contribution:+.2f}</b> <span class="cbm-dim">{state} p{r.percentile:.0f} · {way}</span>' in charts
    assert "absent, pushing for" in charts and "present, pushing against" in charts  # the legend
    readme = (ROOT / "README.md").read_text()
    story = readme[readme.index("Try it:"):].split("\n\n")[0]
    assert f'"{STORY_BIRD}"' in story and "azure finch" in story and "water background: absent, pushing for" in story
    # The first visit's bird is an ordinary image: "Clear images" clears it, and it is not added again;
    # the empty page's hint tells the same story.
    next(b for b in at.button if b.label == "Clear images").click().run()
    assert not at.session_state["images"] and any(f"*{STORY_BIRD}*" in i.value for i in at.info)
    at.run()
    assert not at.session_state["images"]


def test_the_demo_story_holds_on_the_shipped_model(engine):
    """What the README and the app's hint promise: pruning the background concepts raises worst-group
    accuracy by about 11 points on validation data and the story bird is then read correctly."""
    model = engine.model
    pruned = prune_concepts(model, [c for c in model.concepts.names if "background" in c]).model
    val = load_demo_features("val")
    table = compare(model, pruned, val.embeddings, val.labels, val.groups).set_index("metric")
    assert 0.10 <= table.loc["worst-group accuracy"].change <= 0.14
    after = engine.with_model(pruned).explain(story_bytes())
    assert after.class_names[int(after.predicted[0])] == "azure diver"


def test_why_not_defaults_to_the_runner_up(engine):
    at = page("inspect").run()
    exp = engine.explain(story_bytes())
    runner_up = exp.class_names[int(exp.top_classes(2)[0, 1])]
    assert at.selectbox(key=f"why_not_{STORY_BIRD}").value == runner_up
    titles = [h.proto.body for h in at.get("html") if "Why not" in h.proto.body]
    assert len(titles) == 1 and f"Why not {runner_up}: its score" in titles[0]


def test_the_gallery_marks_images_whose_known_class_was_missed():
    at = page("inspect").run()
    at.multiselect(key="inspect_samples").set_value([STORY_BIRD, "azure diver on water"]).run()
    assert not at.exception, at.exception
    # Demo birds are named after their species: the story bird is missed, the one on water is not.
    marks = [m.value for m in at.markdown if "missed" in m.value or "correct" in m.value]
    assert marks == ["**azure finch** · 56%  \n:red[:material/close: **missed**: the true class is azure diver]",
                     "**azure diver** · 90% :green[· correct]"]
    # A class set by hand counts too: say the bird on water were a golden gull.
    at.selectbox(key="truth_azure diver on water").set_value("golden gull").run()
    cards = [m.value for m in at.markdown if m.value.startswith("**")]  # the gallery's cards, not the detail view
    assert sum(":red[:material/close: **missed**: the true class is" in c for c in cards) == 2
    assert any(m.value.startswith(":red[:material/close: **missed**: the true class is **golden gull**") for m in at.markdown)
    assert "Only images the model missed (2)" in [t.label for t in at.toggle]


def test_a_model_built_here_is_evaluated_and_edited_on_the_data_it_was_built_on(tiny_vit, tmp_path):
    from cbm_core import ConceptBank, ImageDataset, build_cbm, evaluate
    from tests.helpers import write_class_folder

    result = build_cbm(tiny_vit, ImageDataset.from_folder(write_class_folder(tmp_path / "shapes", per_class=10)),
                       ConceptBank.from_list(["red", "blue", "green", "round shape"]), lam=1e-3)
    val = result.val_features
    at = page("build")
    # The Build page as its background thread leaves it when the build has finished.
    at.session_state["build_job"] = {"stage": "done", "fraction": 1.0, "done": True, "started": 100.0,
                                     "finished": 103.2, "result": result}
    at.run()
    assert not at.exception, at.exception
    built = [s.value for s in at.success if s.value.startswith("Built in")]
    assert built and built[0].startswith("Built in 3 s.")  # the time it took, not the time since it started
    assert f"{len(val.labels)} validation images" in built[0]
    assert not next(b for b in at.button if b.label == "Build").disabled
    next(b for b in at.button if b.label == "Use it now").click().run()
    assert at.session_state["model"] is result.model

    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, at.exception
    source = widget(at.radio, "evaluate_source").value
    assert source == f"Its build's validation data ({len(val.labels)} images)"
    m = evaluate(result.model, val.embeddings, val.labels)
    assert {x.label: x.value for x in at.metric}["Accuracy"] == f"{m.accuracy:.1%}"

    at.switch_page("pages/edit.py").run()
    assert not at.exception, at.exception
    assert widget(at.radio, "edit_source").value == source
    at.multiselect(key="prune_concepts").set_value(["red"]).run()
    proposal = prune_concepts(result.model, ["red"]).model
    table = compare(result.model, proposal, val.embeddings, val.labels)
    assert {x.label: x.value for x in at.metric}["Accuracy"] == f"{table.iloc[0].after:.1%}"


def test_inspect_opens_on_the_fine_layercam_on_the_demo_and_says_its_grid():
    """The demo's ResNet offers every method, LayerCAM at stage 1 first (its default): 24 x 24 maps at 96 px,
    and the page says so; dense maps are 3 x 3."""
    at = page("inspect").run()
    assert not at.exception, at.exception
    method = widget(at.radio, "sal_method")
    assert list(method.options) == ["layercam-fine", "gradcam-fine", "dense", "dense-surgery", "gradcam"]
    assert method.value == "layercam-fine"
    assert any("24 × 24 cells" in c.value for c in at.caption)
    assert len(component_data(at, "saliency_maps")["maps"]) == 3
    method.set_value("dense").run()
    assert not at.exception, at.exception
    assert any("3 × 3 cells" in c.value for c in at.caption)

"""The Intervene page's expert questions with Streamlit's AppTest: the model asks about a concept, the
expert's answer becomes a set-to-percentile change in the page's history, and the live panel shows the
engine's prediction for it."""
import json

import torch

from cbm_core import Intervention, Pipeline
from cbm_core.demo.paths import SAMPLES_DIR
from cbm_core.demo.shifted import SUPERVISED_BUNDLE
from cbm_core.explain.tti import apply_answer, next_question
from test_tti_pages import page


def test_intervene_asks_the_expert_and_the_answer_changes_the_prediction():
    at = page("intervene", SUPERVISED_BUNDLE)
    data = next(SAMPLES_DIR.glob("14_*.png")).read_bytes()  # the story bird: a waterbird off the water
    at.session_state["images"] = {"story bird": data}
    at.run()
    assert not at.exception, at.exception
    model = at.session_state["model"]
    pipe = Pipeline.from_bundle(SUPERVISED_BUNDLE, device="cpu")
    emb = pipe.encode(data, "story bird").embedding
    question = next_question(model, emb, Intervention(), [], "expected_change")
    shown = [m.value for m in at.markdown if m.value.startswith("**Question 1.**")]
    assert shown and question.prompt() in shown[0]
    # the expert says the opposite of what the model believes
    reply = "absent" if question.belief == "present" else "present"
    next(b for b in at.button if b.key == f"tti_{reply}").click().run()
    assert not at.exception, at.exception
    expected = apply_answer(model, Intervention(), question.concept, reply)
    active = Intervention(at.session_state["history"][at.session_state["history_pos"]])
    assert active.changes[0] == expected.changes[0], "the answer is a set-to-percentile change in the history"
    after = model.explain_features(emb[None], active)
    panel = [e for e in at.get("bidi_component") if e.key == "live_panel"]
    shown_panel = json.loads(panel[0].proto.json)
    logits = torch.tensor(shown_panel["base"]) + torch.tensor(shown_panel["weight"]) @ torch.tensor(shown_panel["z"])
    assert torch.allclose(logits.softmax(-1), after.probs[0], atol=1e-5), "the live panel shows the answered model"
    assert any("Prediction now" in c.value and model.classes[int(after.predicted[0])] in c.value for c in at.caption)
    assert any(m.value.startswith("**Question 2.**") for m in at.markdown)


def test_intervene_offers_the_supervised_bundle_for_the_demo():
    at = page("intervene").run()
    assert not at.exception, at.exception
    button = next(b for b in at.button if b.key == "tti_open_supervised")
    button.click().run()
    assert not at.exception, at.exception
    assert at.session_state["bundle_path"] == str(SUPERVISED_BUNDLE)

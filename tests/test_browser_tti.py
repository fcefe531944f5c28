"""In a real browser (Debian's chromium + Playwright, against `streamlit run`): open the concept-supervised
demo bundle from Intervene, answer the model's question, and see the live panel show the engine's
prediction for that answer (and what it moved)."""
import json

import pytest

from test_browser import CHROMIUM, SHOTS, app_url, page, settle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed")


def test_the_experts_answer_changes_the_prediction_in_the_browser(app_url, page):  # noqa: F811
    from cbm_core import Pipeline
    from cbm_core.demo.shifted import SUPERVISED_BUNDLE
    from cbm_core.core.propagation import ConceptDependencies
    from cbm_core.explain.tti import answers_intervention, next_question
    from ui.common import STORY_BIRD, sample_name, sample_paths

    engine = Pipeline.from_bundle(SUPERVISED_BUNDLE, device="cpu")
    model = engine.model
    bird = next(p for p in sample_paths() if sample_name(p) == STORY_BIRD)  # the image Intervene opens on
    emb = engine.encode(bird.read_bytes(), bird.name).embedding
    question = next_question(model, emb, None, [], "expected_change")
    reply = "absent" if question.belief == "present" else "present"
    want = answers_intervention(model, emb, {question.concept: reply},
                                dependencies=ConceptDependencies.from_model(model))

    page.goto(f"{app_url}/intervene")
    page.get_by_role("button", name="Open the concept-supervised Toy Birds bundle").click()
    page.get_by_text("Question 1.").wait_for()
    settle(page, 1000)
    asked = page.locator("[data-testid=stMarkdownContainer]", has_text="Question 1.").first.inner_text()
    assert question.concept in asked and f"p = {question.probability:.2f}" in asked
    live = page.locator(".live")
    page.get_by_role("button", name=reply.capitalize(), exact=True).click()
    page.get_by_text("Question 2.").wait_for()
    settle(page, 1000)
    shown = json.loads(live.get_attribute("data-probs"))
    for c, name in enumerate(model.classes):
        assert abs(shown[name] - float(want.probs_after[c])) < 1e-4, name
    page.get_by_text("Prediction now").wait_for()
    if want.moved:
        page.get_by_text("Moved with the answers").wait_for()
    page.screenshot(path=str(SHOTS / "intervene_expert.png"), full_page=True)

"""A bundle from another recipe than PCBM opens in the real app and its concepts move the
prediction in the browser panel exactly as the engine says (chromium + Playwright)."""
import json

import pytest

from cbm_core import Intervention, Pipeline, get_recipe
from cbm_core.analysis.comparison import stratified_split
from cbm_core.core.concepts import ConceptBank
from cbm_core.demo.paths import SAMPLES_DIR, load_demo_features
from cbm_core.demo.splits import CONCEPT_TEMPLATE
from cbm_core.demo.world import CONCEPTS, SPECIES_NAMES
from cbm_core.recipes import RecipeInputs
from test_browser import CHROMIUM, SHOTS, app_url, page, settle  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture(scope="module")
def sparse_bundle(tmp_path_factory):
    """A Sparse-CBM (a learned linear concept layer, not text cosines) on the demo's features."""
    bb = Pipeline.from_bundle(__import__("cbm_core.demo.paths", fromlist=["DEMO_BUNDLE"]).DEMO_BUNDLE, device="cpu").backbone
    train, val, _ = stratified_split(load_demo_features("val"), fractions=(0.8, 0.1, 0.1))
    inputs = RecipeInputs(classes=tuple(SPECIES_NAMES), backbone_spec="demo", text=bb.embed_prompts,
                          templates=(CONCEPT_TEMPLATE,), concepts=ConceptBank(tuple(CONCEPTS)), embed_dim=bb.embed_dim)
    model = get_recipe("sparse-cbm").from_inputs(inputs).fit(train.embeddings, train.labels,
                                                            val_features=val.embeddings, val_labels=val.labels).model_
    assert model.concept_layer.kind == "linear"
    return model.save(tmp_path_factory.mktemp("bundles") / "sparse_cbm"), Pipeline(bb, model)


def test_a_sparse_cbm_bundle_opens_and_a_concept_moves_the_prediction(app_url, page, sparse_bundle):  # noqa: F811
    path, engine = sparse_bundle
    page.goto(app_url)
    page.get_by_text("Upload images").first.wait_for()
    settle(page)
    page.get_by_text("Open another bundle").click()
    page.get_by_label("Folder or .zip path").fill(str(path))
    page.get_by_label("Folder or .zip path").press("Enter")
    page.get_by_role("button", name="Open bundle", exact=True).click()
    sidebar = page.locator("[data-testid=stSidebar]")
    sidebar.get_by_text("sparse-cbm").first.wait_for()
    settle(page)
    # the bundle picker names what is loaded (a combobox: its value is the input's, not text)
    assert sidebar.get_by_role("combobox", name="Model bundle").input_value() == "opened: sparse_cbm"
    sample = next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if "crimson_heron_on_land" in p.name)
    page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(sample))
    page.locator("[data-testid=stMain]").get_by_text(f"{sample.name} ·").wait_for()  # Inspect shows it in detail
    settle(page)

    page.get_by_role("link", name="Intervene").click()
    page.get_by_text("Search concepts").wait_for()
    live = page.locator(".live")
    top = engine.explain(str(sample)).to_frame(0).concept[0]
    live.get_by_role("switch", name=f"{top} on").wait_for()
    settle(page, 1000)
    before = json.loads(live.get_attribute("data-probs"))
    live.get_by_role("switch", name=f"{top} on").click()
    after = json.loads(live.get_attribute("data-probs"))
    want = engine.explain(str(sample), Intervention().ablate(top))
    assert after != before
    for c, name in enumerate(want.class_names):
        assert abs(after[name] - float(want.probs[0, c])) < 1e-4, name
    page.get_by_text(f"switch off '{top}'").wait_for()
    settle(page, 500)
    page.screenshot(path=str(SHOTS / "intervene_sparse_cbm.png"), full_page=True)

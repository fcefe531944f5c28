"""The Build page's recipe controls come from the registry's declarations, and a build runs with them."""
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cbm_core.recipes import get_recipe, list_recipes

ROOT = Path(__file__).resolve().parent.parent


def build_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/build.py")
    return at.run()


def test_every_recipe_offers_its_declared_options():
    at = build_page()
    assert not at.exception, at.exception
    offered = at.selectbox(key="build_recipe").options
    assert set(offered) == {r.title for r in list_recipes()}
    for recipe in list_recipes():
        at.selectbox(key="build_recipe").set_value(recipe.name).run()
        assert not at.exception, (recipe.name, at.exception)
        keys = {w.key for w in [*at.checkbox, *at.select_slider, *at.number_input, *at.selectbox] if w.key}
        for p in recipe.params:
            assert f"build_{recipe.name}_{p.name}" in keys, (recipe.name, p.name)


def test_a_toy_birds_build_with_a_non_default_recipe_and_option(monkeypatch, tmp_path):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    at = build_page()
    at.selectbox(key="build_recipe").set_value("linear-probe").run()
    at.select_slider(key="build_n_toy").set_value(160).run()
    lam = get_recipe("linear-probe").param("lam")
    at.select_slider(key="build_linear-probe_lam").set_value(1e-3).run()
    assert lam.default != 1e-3
    at.checkbox(key="build_path").uncheck().run()
    next(b for b in at.button if b.label == "Build").click().run()
    for _ in range(240):
        job = at.session_state["build_job"]
        if job.get("done"):
            break
        time.sleep(0.5)
    assert job.get("done") and "error" not in job, job.get("error")
    model = job["result"].model
    assert model.recipe["name"] == "linear-probe" and model.recipe["lam"] == 1e-3
    assert model.concept_layer.kind == "linear" and model.n_concepts == 64


def test_a_supervised_recipe_on_a_folder_says_it_needs_concept_labels_and_does_not_build():
    at = build_page()
    at.selectbox(key="build_recipe").set_value("supervised").run()
    at.radio(key="build_source").set_value("Folder of class sub-folders").run()
    at.text_input(key="build_folder").input("/some/folder").run()
    assert not at.exception, at.exception
    assert any("0/1 concept labels" in w.value for w in at.warning)
    assert next(b for b in at.button if b.label == "Build").disabled
    at.radio(key="build_source").set_value("Toy Birds (generated now)").run()  # Toy Birds has them
    assert not any("0/1 concept labels" in w.value for w in at.warning)
    assert not next(b for b in at.button if b.label == "Build").disabled

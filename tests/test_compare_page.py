"""The Compare page: recipes and baselines on one dataset, chosen on validation, measured on test."""
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from helpers import write_class_folder

ROOT = Path(__file__).resolve().parent.parent


def test_compare_page_runs_and_shows_every_recipe_at_matched_nec(tmp_path, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_class_folder(tmp_path / "shapes", per_class=10)
    first_class = sorted(d for d in data.iterdir() if d.is_dir())[0]
    (first_class / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # left out, and said so
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/compare.py")
    at.run()
    assert not at.exception, at.exception
    at.radio(key="compare_source").set_value("A dataset on disk").run()
    at.text_input(key="compare_path").set_value(str(data)).run()
    at.file_uploader(key="compare_concepts").upload("concepts.txt", b"red thing\nblue thing\nround shape\n",
                                                    "text/plain").run()
    at.multiselect(key="compare_recipes").set_value(["pcbm"]).run()
    at.number_input(key="compare_nec").set_value(2.0).run()
    assert not at.exception, at.exception
    at.button(key="compare_go").click().run()
    assert not at.exception, at.exception
    for _ in range(600):
        job = at.session_state["compare_job"]
        if job.get("done"):
            break
        time.sleep(0.5)
    assert job.get("done") and "error" not in job, job.get("error")
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["recipe"]) == {"pcbm", "linear-probe (baseline)", "random-concepts (baseline)", "zero-shot (baseline)"}
    assert (table["NEC reached"].dropna() <= 2 + 1e-9).all()
    result = job["result"]
    assert all(r.error is None for r in result.rows), [r.error for r in result.rows]
    assert next(r for r in result.rows if r.recipe == "pcbm").model.n_concepts == 3
    assert result.n_train + result.n_val + result.n_test == 30
    assert [Path(p).name for p, _ in job["skipped"]] == ["broken.png"]
    assert any("1 image could not be read" in e.label for e in at.expander)

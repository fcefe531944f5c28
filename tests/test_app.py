"""Page logic with Streamlit's AppTest (no browser)."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def test_app_starts():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception


def test_overview_shows_a_bundle_and_a_bad_one(tmp_path, hand_model):
    hand_model[0].save(tmp_path / "b")
    at = AppTest.from_file(str(ROOT / "pages" / "overview.py"), default_timeout=60).run()
    at.sidebar.text_input[0].set_value(str(tmp_path / "b")).run()
    assert not at.exception
    assert [m.value for m in at.metric][:2] == ["3", "4"]
    (tmp_path / "bad").mkdir()
    at.sidebar.text_input[0].set_value(str(tmp_path / "bad")).run()
    assert "missing" in at.error[0].value

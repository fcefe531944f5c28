"""The hostile corpus (tests/hostile.py) through the pages' display paths with Streamlit's AppTest:
every accepted file is drawn (gallery, detail image, saliency overlays, Intervene's picture) with
no exception, and every refused one says why in words."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hostile import corpus
from ui.images import overlay_size, plain

ROOT = Path(__file__).resolve().parent.parent
CORPUS = corpus()
ACCEPTED = [s for s in CORPUS if s.accepted]
REFUSED = [s for s in CORPUS if not s.accepted]


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page(f"pages/{name}.py")
    return at


def test_every_odd_upload_is_drawn_on_inspect_or_refused_with_its_reason():
    at = page("inspect").run()
    uploader = at.file_uploader(key="inspect_uploads")
    assert uploader.allowed_type == []  # any file reaches the engine, which says why it refuses one
    for s in CORPUS:
        uploader.upload(s.name, s.data, "application/octet-stream")
    at.run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    for s in REFUSED:
        assert s.name in errors, s.name
    assert "again" not in errors
    kept = set(at.session_state["images"])  # (a first visit may add the demo's story bird too)
    assert {s.name for s in ACCEPTED} <= kept and not kept & {s.name for s in REFUSED}
    assert len(at.image) >= len(ACCEPTED)  # the gallery drew each one

    # In detail (picture, notes, saliency overlays), each geometry and each kind of note once: the
    # gallery above already decoded and drew every mode; what differs in detail is size and notes.
    for s in [s for s in ACCEPTED if s.note or s.name.startswith(("thin-", "exif", "mode-F", "rgb16"))]:
        at.selectbox(key="inspect_current").set_value(s.name).run()
        assert not at.exception, (s.name, at.exception)
        captions = " ".join(c.value for c in at.caption)
        if s.note:
            assert "only the first one is used" in captions or "NaN or infinite" in captions, s.name
    # Dense maps (the ResNet's default is the finer Grad-CAM) on the extreme geometries too.
    at.radio(key="sal_method").set_value("dense").run()
    for s in [s for s in ACCEPTED if s.name.startswith("thin-")]:
        at.selectbox(key="inspect_current").set_value(s.name).run()
        assert not at.exception, (s.name, at.exception)
        assert any("3 × 3 cells" in c.value for c in at.caption), s.name


def test_intervene_draws_thin_deep_and_animated_images():
    picks = [s for s in ACCEPTED if s.name.startswith(("thin-", "rgb16", "mode-F", "mode-I", "float", "animated",
                                                         "mode-LAB", "mode-CMYK"))]
    at = page("intervene")
    at.session_state["images"] = {s.name: s.data for s in picks}
    at.run()
    for s in picks:
        at.selectbox(key="intervene_image").set_value(s.name).run()
        assert not at.exception and not at.error, (s.name, at.exception, at.error)
        assert len(at.image) == 1 and any(m.value.startswith("Originally predicted") for m in at.markdown)


@pytest.mark.parametrize("size", [(1, 20), (20, 1), (3, 60), (400, 20), (7_000, 5_000), (1, 1)])
def test_overlay_sizes_never_have_a_zero_side_and_stay_bounded(size):
    w, h = overlay_size(size)
    assert 1 <= w <= 320 and 1 <= h <= 320


def test_a_file_name_is_shown_as_written_not_as_markdown():
    name = "**bold** [link](x) $x$ :red[red] `code`.png"
    at = page("inspect").run()
    at.file_uploader(key="inspect_uploads").upload(name, b"not an image", "image/png").run()
    assert not at.exception, at.exception
    shown = [e.value for e in at.error if "not an image" in e.value]
    assert shown == [plain(f"'{name}' is not an image this tool can read; it reads PNG, JPEG, WebP, BMP, TIFF or GIF images.")]
    assert "\\*\\*bold\\*\\*" in shown[0] and "&#58;red\\[red\\]" in shown[0]

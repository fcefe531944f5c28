"""The reliability beside every explanation, in the app and the CLI (issue 13): Inspect's presence /
out-of-distribution panel, Evaluate's importance / existence / location table and audit badge, and
``predict``'s reliability fields — each number equal to the engine's."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cbm_core import Pipeline
from cbm_core.explain import reliability as rel
from cbm_core.explain.audit import stored_audit
from cbm_core.explain.concept_metrics import concept_metrics, stored_pointing
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features
from cbm_core.demo.world import CONCEPTS
from test_pages import page as open_page

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def page(name: str) -> AppTest:
    return open_page(name, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def engine():
    """The demo pipeline with the reliability fits the app uses: the bundle's own, or fitted on the Toy
    Birds validation split exactly as ui.reliability_panel.reliable_model does."""
    pipe = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")
    model = pipe.model
    if rel.stored(model, rel.PRESENCE_KEY) is None or rel.stored(model, rel.OOD_KEY) is None:
        model = rel.fit_reliability(model, load_demo_features("val"), label_names=list(CONCEPTS),
                                    fitted_on="the Toy Birds validation split")
    return pipe.with_model(model)


@pytest.fixture(scope="module")
def bundle_pipe():
    """The demo bundle as the CLI opens it: whatever reliability fits it carries, nothing fitted here."""
    return Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")


def sample(name_part: str) -> Path:
    return next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if name_part in p.name)


def noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80, 3)).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(at, column: str):
    return next(d.value for d in at.dataframe if column in getattr(d.value, "columns", []))


def texts(at) -> list[str]:
    return [e.value for kind in ("caption", "markdown", "warning", "error", "info", "success") for e in getattr(at, kind)]


def test_inspect_shows_presence_and_ood_equal_to_the_engine(engine):
    at = page("inspect").run()
    at.multiselect(key="inspect_samples").set_value(["azure diver on land"]).run()
    assert not at.exception, at.exception
    enc = engine.encode(str(sample("azure_diver_on_land")))
    exp = engine.explain_encoded([enc])
    r = rel.reliability(engine.model, exp, 0, embedding=enc.embedding)
    assert r.ood.verdict == rel.TYPICAL
    assert r.ood.sentence() in texts(at)  # a caption under the prediction, no warning
    assert not any("unlike the training data" in t for t in texts(at))
    shown = table(at, "p(present)")
    frame = r.to_frame()
    want = frame[frame.contribution != 0].head(10)  # the concepts the explanation uses
    assert list(shown.concept) == list(want.concept)
    assert np.allclose(shown["p(present)"].astype(float), want.p_present, atol=1e-6)
    assert np.allclose(shown["contribution"].astype(float), want.contribution, atol=1e-6)
    assert list(shown["read as"]) == list(want.read_as)
    # The maps shown above carry their location score; the table's map column says the same.
    located = shown[shown["map"] != "–"]
    assert len(located) >= 1 and set(located["map"]) <= set(rel.MAP_VERDICTS)
    assert any("Presence probabilities are calibrated on 1600 labelled images" in t for t in texts(at))
    # Nothing on the page reads NaN.
    assert not any("nan" in t.lower().split() for t in texts(at))
    assert not shown.isna().any().any()  # '–' where something is not measured
    assert list(shown.doubt) == [d or "–" for d in want.doubt]


def test_inspect_warns_about_an_image_unlike_the_training_data(engine):
    at = page("inspect").run()
    at.file_uploader(key="inspect_uploads").upload("noise.png", noise_png(), "image/png").run()
    assert not at.exception, at.exception
    enc = engine.encode(noise_png(), "noise.png")
    r = rel.reliability(engine.model, engine.explain_encoded([enc]), 0, embedding=enc.embedding)
    assert r.ood.verdict == rel.FOREIGN
    assert [e.value for e in at.error] == [r.ood.sentence()]
    assert "unlike the training data" in at.error[0].value
    assert any("not like the images these probabilities were calibrated on" in w.value for w in at.warning)


def test_inspect_opens_a_concept_atlas(engine):
    at = page("inspect").run()
    at.multiselect(key="inspect_samples").set_value(["azure diver on land"]).run()
    first = table(at, "p(present)").concept[0]
    at.button(key=f"atlas_button_{first}").click().run()
    assert not at.exception, at.exception
    assert any(f"Atlas of _{first}_" in t for t in texts(at))
    assert any(t.startswith("Ranked over 1600 images of the Toy Birds validation split") for t in texts(at))


def test_evaluate_shows_importance_existence_and_the_audit_badge(engine):
    at = page("evaluate").run()
    assert not at.exception, at.exception
    feats = load_demo_features("test")
    model = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").model
    y = rel.labels_in_model_order(model, feats.concept_labels, list(CONCEPTS))
    want = concept_metrics(model, feats.embeddings, feats.labels, y)
    shown = table(at, "importance")
    assert list(shown.concept) == list(want.concept)
    assert not shown.isna().any().any() and not shown.astype(str).isin(["None", "nan", "NaN"]).any().any()
    assert np.allclose(shown.importance.astype(float), want.importance, atol=1e-6)
    assert list(shown.existence) == ["–" if pd.isna(v) else f"{v:.0%}" for v in want.existence]
    assert list(shown["accuracy if off (pts)"]) == ["–" if pd.isna(v) else f"{-100 * v:+.1f}" for v in want.accuracy_drop]
    pointing = stored_pointing(model)
    if pointing is not None:  # the location column, stored with the bundle by the reliability report
        game = pointing.frame.set_index("concept").pointing_game
        rows = shown.set_index("concept")
        for concept in model.concepts.names:
            assert rows.loc[concept, "pointing game"] == (f"{game[concept]:.0%}" if concept in game else "–")
        assert any(f"Stored with the bundle: {pointing.method} maps on {pointing.measured_on}" in t for t in texts(at))
    audit = stored_audit(model)
    badge = next(t for t in texts(at) if "badge[" in t)
    if audit is None:
        assert "not audited" in badge
    else:
        assert ("Uses its concepts" in badge) == audit.uses_concepts
        checks = [e.value for e in at.success] + [e.value for e in at.warning]
        for name, ok, sentence in audit.checks():
            assert f"**{name}** — {sentence}" in checks
        assert f"{audit.absent_accuracy:.1%}" in " ".join(checks)


# -- the CLI ------------------------------------------------------------------------------------------------
def run(*args):
    return subprocess.run([sys.executable, "-m", "cbm_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=300)


def test_predict_carries_the_reliability_of_each_explanation(bundle_pipe, tmp_path):
    engine = bundle_pipe
    odd = tmp_path / "noise.png"
    odd.write_bytes(noise_png())
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 20, 20)).save(one)
    bird = str(sample("azure_diver_on_land"))
    proc = run("predict", "--bundle", str(DEMO_BUNDLE), bird, str(odd), str(one), "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for r, path in zip(out, (bird, str(odd), str(one))):
        enc = engine.encode(path)
        trust = rel.reliability(engine.model, engine.explain_encoded([enc]), 0, embedding=enc.embedding)
        assert r["ood"]["verdict"] == trust.ood.verdict and r["ood"]["message"] == trust.ood.sentence()
        p = dict(zip(trust.concepts, trust.p_present.tolist()))
        for c in r["top_concepts"]:
            assert c["p_present"] == pytest.approx(p[c["concept"]], abs=1e-6)
            assert c["read_as"] in ("present", "absent") and "flag" in c
        assert r["probably_absent"] == trust.probably_absent(5)
        assert r["presence_from"] == trust.calibration.method
    assert out[0]["ood"]["verdict"] == rel.TYPICAL
    assert out[1]["ood"]["verdict"] == out[2]["ood"]["verdict"] == rel.FOREIGN
    text = run("predict", "--bundle", str(DEMO_BUNDLE), bird, str(odd), "--device", "cpu")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(line.startswith(f"{odd}: ") for line in lines)
    assert f"warning: {odd}: This image is unlike the training data" in text.stderr
    assert f"warning: {bird}" not in text.stderr
    because = [line for line in lines if line.strip().startswith("because:")]
    for c in out[0]["top_concepts"]:  # each concept with its presence, and its doubts where it has any
        said = f"{c['concept']} ({c['contribution']:+.2f}, {c['read_as']}, p(present) {c['p_present']:.2f}"
        assert said + (f"; {c['flag']})" if c["flag"] else ")") in because[0]
    assert any(c["flag"] == "fragile name" for c in out[0]["top_concepts"])  # 'short tail' (docs/RELIABILITY.md)
    assert [line.strip() for line in lines if line.strip().startswith("image:")] == \
        [f"image: {out[0]['ood']['summary']}", f"image: {out[1]['ood']['summary']}"]


def test_info_names_the_stored_fits_instead_of_printing_every_number():
    proc = run("info", "--bundle", str(DEMO_BUNDLE))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    if rel.OOD_KEY in metrics:  # the shipped bundle carries its fits (docs/RELIABILITY.md, --write-bundles)
        assert metrics[rel.OOD_KEY].startswith("mahalanobis out-of-distribution reference, rank 64")
        assert "Platt scaling on labels" in metrics[rel.PRESENCE_KEY]
        assert metrics[rel.NAMES_KEY].startswith("paraphrase check:")
    assert len(proc.stdout) < 20_000

"""The dashboard's concept-supervised pieces with Streamlit's AppTest: concept AUROC and intervention
curves on Evaluate, "Adapt to new data" on Edit — each number checked against the engine. (The expert's
questions on Intervene: test_tti_intervene_page.py.)"""
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cbm_core import load_bundle
from cbm_core.analysis.adaptation import few_shot, propose_adaptation
from cbm_core.demo.paths import load_demo_features
from cbm_core.demo.shifted import SUPERVISED_BUNDLE, load_shifted_features
from cbm_core.explain.tti import intervention_curve

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def page(name: str, bundle: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page(f"pages/{name}.py")
    if bundle is not None:  # as if opened from the sidebar
        at.session_state["model"] = load_bundle(bundle)
        at.session_state["bundle_path"] = str(bundle)
        at.session_state["history"], at.session_state["history_pos"] = [()], 0
    return at


def test_evaluate_shows_concept_auroc_and_curves_of_a_supervised_bundle():
    at = page("evaluate", SUPERVISED_BUNDLE).run()
    assert not at.exception, at.exception
    model = at.session_state["model"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean concept AUROC"] == f"{model.metrics['concept_auroc_mean']:.3f}"
    table = next(d.value for d in at.dataframe if "AUROC on this data" in getattr(d.value, "columns", []))
    assert len(table) == model.n_concepts
    stored = table.set_index("concept").iloc[:, 0]
    assert all(abs(stored[n] - v) < 1e-9 for n, v in model.metrics["concept_auroc"].items())
    test = load_demo_features("test")
    curve = intervention_curve(model, test.embeddings, test.labels, test.concept_labels, "expected_change",
                               max_answers=10)
    chart = next(c for c in at.get("plotly_chart") if "Accuracy after k answers" in c.proto.spec)
    import json

    spec = json.loads(chart.proto.spec)
    line = next(t for t in spec["data"] if t["name"].startswith("expected change"))
    assert [round(v, 6) for v in line["y"]] == [round(v, 6) for v in curve.accuracy]
    cond = next(d.value for d in at.dataframe if "lift" in getattr(d.value, "columns", []))
    assert len(cond) == model.n_concepts - 1


def test_edit_adapts_the_demo_to_its_shifted_data_and_logs_it():
    at = page("edit").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.key == "adapt_go").click().run()
    assert not at.exception, at.exception
    model = at.session_state["model"]
    pool, source = load_shifted_features("val"), load_demo_features("val")
    pick = few_shot(pool.labels, 4, seed=0)
    proposal = propose_adaptation(model, pool.embeddings[pick], pool.labels[pick], source_embeddings=source.embeddings,
                                  source_labels=source.labels)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["The 32 labelled images"] == f"{proposal.target_after:.1%}"
    assert metrics["Original data (validation)"] == f"{proposal.source_after:.1%}"
    assert any(proposal.edits[0].describe() in m.value for m in at.markdown)
    next(b for b in at.button if b.key == "adapt_apply").click().run()
    assert not at.exception, at.exception
    edited = at.session_state["model"]
    assert edited.edit_log[-1]["op"] == "adapt" and edited.edit_log[-1]["mask"] == list(proposal.mask)
    log = [e for e in at.dataframe if "edit" in getattr(e.value, "columns", [])]
    assert log and log[0].value["edit"].tolist() == ["adapt (from 32 images)"]

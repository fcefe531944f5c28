"""INTERVENTIONS.md's findings are written from the measured report: each conditional sentence follows its number."""
import copy
import json

from cbm_core.demo.interventions_report import DOCS, document, findings

REPORT = json.loads((DOCS / "interventions.json").read_text())


def _set(report, mode, domain, st, policy, k, value):
    report["modes"][mode]["curves"][domain][st][policy][k] = value


def test_leakage_is_reported_only_when_true_answers_cost_the_joint_model_accuracy():
    r = copy.deepcopy(REPORT)
    start = r["modes"]["joint"]["curves"]["source"]["none"]["uncertainty"][0]
    _set(r, "joint", "source", "none", "uncertainty", 10, start - 0.03)
    hurt = findings(r)
    assert "can hurt the others" in hurt and "-3.0 pts" in hurt and "help every mode" not in hurt
    _set(r, "joint", "source", "none", "uncertainty", 10, start + 0.01)
    helps = findings(r)
    assert "help every mode" in helps and "+1.0 pts" in helps and "it does not show on this tower" in helps


def test_propagation_is_said_to_cost_on_source_birds_only_when_it_does():
    r = copy.deepcopy(REPORT)
    plain = r["modes"]["independent"]["curves"]["source"]["none"]["expected_change"][5]
    _set(r, "independent", "source", "class", "expected_change", 5, plain - 0.01)
    assert "it costs: -1.0 pts" in findings(r) and "pulls an atypical bird's free concepts" in findings(r)
    _set(r, "independent", "source", "class", "expected_change", 5, plain)
    assert "changes little: +0.0 pts" in findings(r) and "pulls an atypical bird's" not in findings(r)


def test_the_shortcut_sentence_names_exactly_the_adaptations_that_raise_source_accuracy():
    r = copy.deepcopy(REPORT)
    first, second = list(r["adaptation"])
    for name, delta in ((first, -0.01), (second, +0.01)):
        for row in r["adaptation"][name]:
            row["source_after"] = row["source_before"] + delta
    text = findings(r)
    assert f"Source accuracy rises on average for {second}:" in text and f"for {first}" not in text
    for row in r["adaptation"][second]:
        row["source_after"] = row["source_before"] - 0.01
    assert "Source accuracy rises" not in findings(r)


def test_the_shipped_document_is_what_the_shipped_report_writes():
    assert (DOCS / "INTERVENTIONS.md").read_text() == document(REPORT)

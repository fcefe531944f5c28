"""Measure concept-supervised CBMs, test-time intervention, propagation and training-free adaptation
on Toy Birds, and write docs/INTERVENTIONS.md (+ docs/interventions.json with every number).
The prose's numbers are computed from the measurements, so the document never disagrees with itself.

    python -m cbm_core.demo.interventions_report          # ~5-10 min on a 2-core CPU (features cached)

Everything is seeded; the expert of the intervention curves answers from the birds' ground truth.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..analysis.adaptation import adaptation_sweep
from ..backbone import load_backbone
from ..core.bundle import load_bundle
from ..analysis.evaluation import evaluate
from ..core.propagation import ConceptDependencies
from ..explain.tti import POLICIES, intervention_curve, tune_coop
from .build_supervised import SHIPPED_SHIFTED, fit_supervised
from .paths import DEMO_BUNDLE
from .shifted import shifted_features
from .splits import SPLIT_SIZES, toybirds_features
from .world import CONCEPTS, SPECIES_NAMES

DOCS = Path(__file__).resolve().parents[2] / "docs"
MODES = ("independent", "sequential", "joint")
SHOWN_K = (0, 1, 2, 3, 5, 8, 10)
RANDOM_SEEDS = 3


def _curves(model, data, policies, coop, deps=None, max_answers=10) -> dict:
    out = {}
    for policy in policies:
        seeds = range(RANDOM_SEEDS) if policy == "random" else range(1)
        runs = [intervention_curve(model, data.embeddings, data.labels, data.concept_labels, policy,
                                   max_answers=max_answers, coop=coop, dependencies=deps, seed=s).accuracy
                for s in seeds]
        out[policy] = [sum(r[k] for r in runs) / len(runs) for k in range(len(runs[0]))]
    return out


def measure(seed: int = 0, draws: int = 10) -> dict:
    t0 = time.time()
    backbone = load_backbone("demo", device="cpu")
    src = {s: toybirds_features(backbone, s, seed=seed) for s in SPLIT_SIZES}
    tgt = {s: shifted_features(backbone, s, seed=seed).subset(torch.arange(n)) for s, n in SHIPPED_SHIFTED.items()}
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                    "date": _dt.date.today().isoformat(), "seed": seed, "modes": {}}
    deps = {st: ConceptDependencies(structure=st).fit(src["train"].concept_labels, src["train"].labels,
                                                      len(SPECIES_NAMES), CONCEPTS) for st in ("class", "pairwise")}
    report["dependencies"] = {st: {"held_out_pseudo_loglik": d.log_likelihood(src["val"].concept_labels)}
                              for st, d in deps.items()}
    models = {}
    for mode in MODES:
        t = time.time()
        est = fit_supervised(src["train"], src["val"], mode=mode)
        model = models[mode] = est.model_
        m = model.metrics
        coop, areas = tune_coop(model, src["val"].embeddings, src["val"].labels, src["val"].concept_labels)
        entry = {"fit_seconds": time.time() - t, "val_accuracy": evaluate(model, src["val"].embeddings, src["val"].labels).accuracy,
                 "test_accuracy": evaluate(model, src["test"].embeddings, src["test"].labels).accuracy,
                 "shifted_test_accuracy": evaluate(model, tgt["test"].embeddings, tgt["test"].labels).accuracy,
                 **model.sparsity(), **{k: m[k] for k in ("concept_auroc_mean", "concept_auroc_worst", "concept_ece_before",
                                                          "concept_ece_after", "concept_auroc", "concept_accuracy")},
                 "coop_weights": list(coop), "coop_tuning": areas, "curves": {}}
        for domain, data in (("source", src["test"]), ("shifted", tgt["test"])):
            entry["curves"][domain] = {"none": _curves(model, data, POLICIES, coop)}
            for st, d in deps.items():
                entry["curves"][domain][st] = _curves(model, data, POLICIES, coop, d)
        report["modes"][mode] = entry
        print(f"{mode}: {time.time() - t:.0f} s", flush=True)
    adapt = {}
    for name, model in (("pcbm (shipped demo bundle)", load_bundle(DEMO_BUNDLE)),
                        ("supervised, independent", models["independent"])):
        t = time.time()
        adapt[name] = adaptation_sweep(model, tgt["val"], tgt["test"], src["val"], src["test"], draws=draws)
        print(f"adaptation {name}: {time.time() - t:.0f} s", flush=True)
    report["adaptation"] = adapt
    report["draws"] = draws
    report["seconds"] = time.time() - t0
    return report


def _row(values, fmt="{:.1%}"):
    return " | ".join(fmt.format(v) for v in values)


def _mean_sd(xs):
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0, float(t.min())


def markdown(r: dict) -> str:
    M = r["modes"]
    L = [
        "# Concept-supervised CBMs, test-time intervention, propagation and adaptation on Toy Birds",
        "",
        f"Produced by `python -m cbm_core.demo.interventions_report` on {r['date']} (seed {r['seed']}; machine: "
        f"{r['machine']}, shared with other jobs; {r['seconds'] / 60:.0f} min in all). Source domain: the plain "
        "Toy Birds splits (4,000 train, 1,600 val, 1,600 test; test backgrounds balanced). Shifted domain: the same "
        "birds under `world.SHIFTS['stain']` (a stain-like colour cast with per-image strength jitter, and the bird "
        f"at 80 % of its size): {SHIPPED_SHIFTED['val']} shifted validation birds as the pool of labelled target "
        f"images, {SHIPPED_SHIFTED['test']} shifted test birds to measure on.",
        "",
        "## Concept-supervised CBM (recipe `supervised`)",
        "",
        "Concept predictors: one logistic regression per concept on the demo CLIP's 64-d embeddings, Platt-calibrated "
        "on the validation split's concept labels; head: our elastic net (λ 2e-3, l1 ratio 0.99). Joint: λ_c = 1, "
        "20 rounds of (exact FISTA head, 25 Adam steps on the predictors).",
        "",
        "| mode | val acc | test acc | shifted test acc | NEC | concept AUROC mean (val) | worst | ECE before → after calibration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, e in M.items():
        L.append(f"| {mode} | {e['val_accuracy']:.1%} | {e['test_accuracy']:.1%} | {e['shifted_test_accuracy']:.1%} | "
                 f"{e['nec']:.1f} | {e['concept_auroc_mean']:.3f} | {e['concept_auroc_worst']:.3f} | "
                 f"{e['concept_ece_before']:.4f} → {e['concept_ece_after']:.4f} |")
    ind = M["independent"]
    worst = sorted(((v, k) for k, v in ind["concept_auroc"].items() if v is not None))[:6]
    L += ["", "Hardest concepts (independent mode, validation AUROC): "
          + ", ".join(f"{k} {v:.3f}" for v, k in worst) + ".",
          "The predictors are already well calibrated on in-domain data (logistic regressions on a frozen "
          "embedding), so Platt scaling changes little; it matters where predictors are overconfident.",
          "", "## Test-time intervention: accuracy after k answers (ground truth), per policy", "",
          "Policies (cbm_core/explain/tti.py): random (mean of 3 seeds), uncertainty (p closest to 0.5), expected change "
          "(expected KL of the class probabilities over the two answers), CooP (Chauhan et al. 2023: α·entropy + "
          "β·expected change of the top class's probability; β tuned on source validation). Every policy asks "
          "concepts the head uses before those it does not (an answer about an unused concept cannot change the "
          "prediction). \"present\" = 95th training percentile, \"absent\" = 5th.", ""]
    head = "| mode | domain | policy | " + " | ".join(f"k={k}" for k in SHOWN_K) + " |"
    L += [head, "|" + "---|" * (3 + len(SHOWN_K))]
    for mode, e in M.items():
        for domain in ("source", "shifted"):
            for policy, acc in e["curves"][domain]["none"].items():
                L.append(f"| {mode} | {domain} | {policy} | " + _row([acc[k] for k in SHOWN_K]) + " |")
    L += ["", "CooP's β per mode (source validation): "
          + ", ".join(f"{m} β = {e['coop_weights'][1]:g}" for m, e in M.items()) + ".", ""]
    L += ["## Propagation to correlated concepts", "",
          "Dependencies learnt from the 4,000 training birds' concept labels (cbm_core/core/propagation.py). Held-out "
          "pseudo-log-likelihood of one concept given the others (validation labels): "
          + ", ".join(f"{st} {d['held_out_pseudo_loglik']:.3f}" for st, d in r["dependencies"].items()) + ".", "",
          "| mode | domain | policy | propagation | " + " | ".join(f"k={k}" for k in SHOWN_K) + " |",
          "|" + "---|" * (4 + len(SHOWN_K))]
    for mode, e in M.items():
        for domain in ("source", "shifted"):
            for policy in POLICIES:
                for st in ("none", "class", "pairwise"):
                    acc = e["curves"][domain][st][policy]
                    L.append(f"| {mode} | {domain} | {policy} | {st} | " + _row([acc[k] for k in SHOWN_K]) + " |")
    L += ["", "## Training-free adaptation to the shifted domain (cbm_core/analysis/adaptation.py)", "",
          f"Labelled target images drawn from the shifted validation pool, {r['draws']} draws per number of images "
          "per class; no training: masks and ×1.5/×2/×3 amplifications chosen greedily on the target images' "
          "log-likelihood, refused if they cost source validation accuracy (any) or log-likelihood (> 0.02 nats). "
          "Accuracy on the shifted test set (target) and the source test set (source), mean ± sd over draws "
          "(min in brackets).", "",
          "| model | images per class | target before | target after | target gain | source before | source change | "
          "draws with source within 1 pt | edits |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in r["adaptation"].items():
        for n in sorted({row["n_per_class"] for row in rows}):
            sub = [row for row in rows if row["n_per_class"] == n]
            gain = _mean_sd([row["target_after"] - row["target_before"] for row in sub])
            src = _mean_sd([row["source_after"] - row["source_before"] for row in sub])
            L.append(f"| {name} | {n} | {sub[0]['target_before']:.1%} | "
                     f"{sum(row['target_after'] for row in sub) / len(sub):.1%} | "
                     f"{gain[0] * 100:+.1f} ± {gain[1] * 100:.1f} pts ({gain[2] * 100:+.1f}) | {sub[0]['source_before']:.1%} | "
                     f"{src[0] * 100:+.1f} ± {src[1] * 100:.1f} pts ({src[2] * 100:+.1f}) | "
                     f"{sum(row['source_after'] - row['source_before'] >= -0.01 for row in sub)} / {len(sub)} | "
                     f"{sum(row['edits'] for row in sub) / len(sub):.1f} |")
    return "\n".join(L) + "\n"


def _at(r, mode, domain, st, policy, k):
    return r["modes"][mode]["curves"][domain][st][policy][k]


def findings(r: dict) -> str:
    """The headline numbers, computed from the report (so they never disagree with the tables)."""
    ind, M = r["modes"]["independent"], r["modes"]
    pts = lambda a, b: f"{(b - a) * 100:+.1f} pts"  # noqa: E731
    src = lambda mode, pol, k, st="none": _at(r, mode, "source", st, pol, k)  # noqa: E731
    sh = lambda mode, pol, k, st="none": _at(r, mode, "shifted", st, pol, k)  # noqa: E731
    best_src = max(("uncertainty", "expected_change", "coop"), key=lambda p: src("independent", p, 5))
    adapt, masked = {}, {}
    for name, rows in r["adaptation"].items():
        sub = [row for row in rows if row["n_per_class"] == 4]
        adapt[name] = (sum(x["target_after"] - x["target_before"] for x in sub) / len(sub),
                       sum(x["source_after"] - x["source_before"] for x in sub) / len(sub),
                       sum(x["source_after"] - x["source_before"] >= -0.01 for x in sub), len(sub))
        counts: dict[str, int] = {}
        for x in sub:
            for c in x["masked"]:
                counts[c] = counts.get(c, 0) + 1
        masked[name] = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    dep = r["dependencies"]
    joint_change = src("joint", "uncertainty", 10) - src("joint", "uncertainty", 0)
    if joint_change < -0.005:
        answers = (f"- **Answers help the independent model and can hurt the others** (Koh et al. saw the same): on source "
                   f"test birds, five true answers chosen by {best_src} give "
                   f"{pts(src('independent', best_src, 0), src('independent', best_src, 5))} to the independent model, while "
                   f"ten uncertainty-chosen answers change the joint model's accuracy by {pts(0, joint_change)}: its head "
                   "learnt from predicted probabilities whose small deviations carry class information (concept leakage), "
                   "which a true 0/1 answer removes. The default mode is therefore `independent`.")
    else:
        answers = (f"- **Answers help every mode here**: on source test birds, five true answers chosen by {best_src} give "
                   f"{pts(src('independent', best_src, 0), src('independent', best_src, 5))} to the independent model, and "
                   f"ten uncertainty-chosen answers change the joint model's accuracy by {pts(0, joint_change)}. Koh et al. "
                   "saw joint models lose accuracy to true answers (concept leakage: the head reads class information in "
                   "the small deviations of predicted probabilities, which a true 0/1 answer removes); it does not show on "
                   "this tower. The default mode stays `independent`, whose head never saw predicted probabilities and so "
                   "cannot leak.")
    source_cost = src("independent", "expected_change", 5, "class") - src("independent", "expected_change", 5)
    rising = [name for name, (_, s_, _, _) in adapt.items() if s_ > 0]
    L = [
        f"- **Concept predictors** (independent mode): validation AUROC {ind['concept_auroc_mean']:.3f} on average, "
        f"worst {ind['concept_auroc_worst']:.3f}; calibration error {ind['concept_ece_before']:.4f} before Platt "
        f"scaling, {ind['concept_ece_after']:.4f} after. All three modes reach {min(e['test_accuracy'] for e in M.values()):.1%}"
        f"–{max(e['test_accuracy'] for e in M.values()):.1%} test accuracy: here the background shortcut, not the "
        "concepts, limits accuracy.",
        answers,
        f"- **Where concepts are wrong, answers matter, and the question matters**: on the shifted birds (accuracy "
        f"{sh('independent', 'random', 0):.1%}), five answers give {sh('independent', 'random', 5):.1%} chosen at random, "
        f"{sh('independent', 'uncertainty', 5):.1%} by uncertainty, {sh('independent', 'coop', 5):.1%} by CooP and "
        f"{sh('independent', 'expected_change', 5):.1%} by expected change — the dashboard's default. CooP's β, tuned on "
        "source validation where every policy is within a few tenths, does not transfer to the shifted domain.",
        f"- **Propagation**: with the latent-class prior, five answers on the shifted birds reach "
        f"{sh('independent', 'expected_change', 5, 'class'):.1%} (expected change; "
        f"{pts(sh('independent', 'expected_change', 5), sh('independent', 'expected_change', 5, 'class'))} over no propagation), "
        f"{sh('independent', 'uncertainty', 5, 'class'):.1%} (uncertainty; "
        f"{pts(sh('independent', 'uncertainty', 5), sh('independent', 'uncertainty', 5, 'class'))}), "
        f"{sh('independent', 'random', 5, 'class'):.1%} (random; "
        f"{pts(sh('independent', 'random', 5), sh('independent', 'random', 5, 'class'))}); after ten expected-change "
        f"answers {sh('independent', 'expected_change', 10, 'class'):.1%} instead of "
        f"{sh('independent', 'expected_change', 10):.1%}. On source birds, whose concepts are already right, it "
        f"{'costs' if source_cost < -0.002 else 'changes little'}: "
        f"{pts(src('independent', 'expected_change', 5), src('independent', 'expected_change', 5, 'class'))} after five "
        f"expected-change answers ({pts(src('independent', 'expected_change', 1), src('independent', 'expected_change', 1, 'class'))} "
        "after the first)" + (", because it pulls an atypical bird's free concepts towards its species' usual ones"
                               if source_cost < -0.002 else "") + ". The dashboard propagates by default (an expert answers where the model is unsure) and says what moved; one switch "
        "turns it off.",
        f"- **Which dependency model**: the pairwise (Ising) prior predicts a held-out concept from the others better "
        f"(pseudo-log-likelihood {dep['pairwise']['held_out_pseudo_loglik']:.3f} vs {dep['class']['held_out_pseudo_loglik']:.3f}: "
        "it knows a crown has one colour), but after answers the latent-class prior does better on the shifted birds "
        f"({sh('independent', 'expected_change', 5, 'class'):.1%} vs {sh('independent', 'expected_change', 5, 'pairwise'):.1%} "
        f"after five expected-change answers, {sh('independent', 'expected_change', 10, 'class'):.1%} vs "
        f"{sh('independent', 'expected_change', 10, 'pairwise'):.1%} after ten) and costs less on source with random "
        f"questions ({src('independent', 'random', 5, 'class'):.1%} vs {src('independent', 'random', 5, 'pairwise'):.1%}); "
        "its posterior is exact (no mean-field iterations), and Toy Birds' species are what tie its concepts together. "
        "So `class` is the recipe's default.",
        "- **Adaptation from 4 labelled images per class**: "
        + "; ".join(f"{name}: shifted-domain accuracy {t * 100:+.1f} pts, source {s_ * 100:+.1f} pts on average, source "
                    f"within 1 pt in {ok} of {n} draws" for name, (t, s_, ok, n) in adapt.items())
        + ". Most often masked: " + "; ".join(f"{name}: " + ", ".join(f"{c} ({k} of {adapt[name][3]} draws)" for c, k in top)
                                              for name, top in masked.items())
        + (f". Source accuracy rises on average for {' and '.join(rising)}: the stain recolours water, and masking the "
           "water-background concept also removes the training shortcut on the balanced source test set." if rising else "."),
    ]
    return "\n".join(L)


INTRO = """
How to use it: build a concept-supervised bundle (`python -m cbm_core build --recipe supervised --data manifest.csv
...`, a CSV with one 0/1 column per concept; or `python -m cbm_core.demo.build_supervised` for Toy Birds), then

    python -m cbm_core intervene-curve --bundle assets/demo_supervised_bundle --data demo-shifted:test --propagate
    python -m cbm_core adapt --bundle assets/demo_bundle --target demo-shifted:val --per-class 4 \\
        --source demo:val --test demo-shifted:test --out adapted_bundle

In the dashboard: *Intervene* asks the expert questions for a supervised bundle (the policy, the answer, the
prediction and what propagation moved); *Evaluate* shows per-concept AUROC, intervention curves and the
conditional probabilities p(concept j | concept i [, class]); *Edit model* has "Adapt to new data".

Joint training keeps the head sparse exactly: it alternates between the head, solved by the same FISTA elastic net
as every recipe (proximal steps, so its zeros are exact and λ means the same sparsity everywhere), and Adam steps on
the concept predictors with the head fixed — not an ℓ1 penalty thresholded afterwards. Question policies are all
training-free: "Learning to Intervene" (Espinosa Zarlenga et al., 2023) learns its policy with a network trained
alongside the model, which this tool does not do; CooP (Chauhan et al., 2023) is the literature's training-free policy.

How the pieces work: `cbm_core/recipes/supervised.py` (the recipe, its joint objective and calibration),
`cbm_core/explain/tti.py` (answers, policies, curves), `cbm_core/core/propagation.py` (dependencies and the posterior),
`cbm_core/analysis/adaptation.py` (masks and amplifications, evidence and search), `cbm_core/analysis/edits.py`
(`adapt_concepts`, the `adapt` edit-log entry, replay).
"""


def document(r: dict) -> str:
    tables = markdown(r)
    title, rest = tables.split("\n", 1)
    return f"{title}\n{INTRO}\n## What the numbers say\n\n{findings(r)}\n{rest}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=10, help="few-shot draws per number of images per class")
    ap.add_argument("--out", default=str(DOCS), help="folder for INTERVENTIONS.md and interventions.json")
    ap.add_argument("--from-json", default=None, help="re-write the document from a saved interventions.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        report = measure(args.seed, args.draws)
        (out / "interventions.json").write_text(json.dumps(report, indent=1))
    (out / "INTERVENTIONS.md").write_text(document(report))
    print(document(report))


if __name__ == "__main__":
    main()

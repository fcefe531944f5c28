"""``python -m cbm_core``: build, predict, evaluate, edit and inspect concept bottleneck models.

Examples::

    python -m cbm_core build --backbone ViT-B-32:openai --data photos/ --concepts concepts.txt --out my_cbm
    python -m cbm_core predict --bundle my_cbm bird1.jpg bird2.png
    python -m cbm_core evaluate --bundle my_cbm --data test_photos/
    python -m cbm_core edit --bundle my_cbm --prune "water" --out my_cbm_no_water --data val_photos/
    python -m cbm_core info --bundle my_cbm
    python -m cbm_core intervene-curve --bundle assets/demo_supervised_bundle --data demo:test --propagate
    python -m cbm_core adapt --bundle my_cbm --target new_site/ --source val_photos/ --out my_cbm_adapted
    python -m cbm_core extract --backbone ViT-B-32:openai --data photos/ --ray ray://head:10001
    python -m cbm_core report --bundle my_cbm bird1.jpg bird2.png --spurious "water" --data val_photos/ --out why.pdf
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from .errors import CBMError


def _dataset(path: str, split: str | None, allow_outside: bool = False):
    from .data.datasets import ImageDataset

    p = Path(path)
    if p.suffix.lower() != ".csv":
        return ImageDataset.from_folder(p)
    return ImageDataset.from_csv(p, split=split, allow_outside=allow_outside)


def _features(backbone, dataset, quiet: bool):
    from .data.features import extract_features

    feats = extract_features(backbone, dataset, progress_bar=not quiet)
    _report_skipped(feats.skipped)
    return feats


def _report_skipped(skipped) -> None:
    from .data.images import printable

    for path, reason in skipped:
        print(f"skipped {printable(path)}: {reason}", file=sys.stderr)  # file names are a stranger's text


class _StageBars:
    """One progress bar per build stage, closed when the next stage starts (no stray bars)."""

    def __init__(self, quiet: bool):
        self.quiet, self.stage, self.bar = quiet, None, None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.quiet:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            if stage == "done":
                return
            from tqdm.auto import tqdm

            self.bar = tqdm(total=100, desc=stage, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
                            file=sys.stderr, leave=True)
        if self.bar is not None:
            self.bar.n = int(round(min(max(fraction, 0.0), 1.0) * 100))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None


def cmd_build(args) -> None:
    from .backbone import load_backbone
    from .build import build_cbm
    from .core.bundle import bundle_exists
    from .core.concepts import ConceptBank, check_templates, load_candidate_pool, load_vocabulary
    from .data.images import printable
    from .recipes import get_recipe

    recipe = get_recipe(args.recipe)
    if bundle_exists(args.out) and not args.overwrite:  # before any slow step
        raise CBMError(f"A bundle already exists at '{args.out}'. Choose another --out, or pass --overwrite to replace it.")
    params = recipe.check_params({p.name: getattr(args, p.name) for p in recipe.params
                                  if getattr(args, p.name, None) is not None})
    templates = check_templates(args.template or ["{}"])
    needs = set(recipe.needs)
    for flag, need in (("--concepts", "concepts"), ("--pool", "candidate_pool"), ("--vocabulary", "vocabulary")):
        if need in needs and getattr(args, need if need != "candidate_pool" else "pool") is None:
            raise CBMError(f"Recipe '{recipe.name}' needs {flag}.")
    bank = ConceptBank.from_file(args.concepts) if "concepts" in needs else None
    vocabulary = load_vocabulary(args.vocabulary) if "vocabulary" in needs else None
    train = _dataset(args.data, args.train_split, args.allow_outside_paths)
    val = _dataset(args.val, args.val_split, args.allow_outside_paths) if args.val else None
    pool = load_candidate_pool(args.pool, train.classes) if "candidate_pool" in needs else None
    backbone = load_backbone(args.backbone, device=args.device, precision=args.precision)
    bars = _StageBars(args.quiet)
    try:
        result = build_cbm(backbone, train, bank, val=val, templates=templates, recipe=recipe.name,
                           candidate_pool=pool, vocabulary=vocabulary, dedupe=args.dedupe,
                           class_similarity=args.class_similarity, stream=args.stream, progress=bars, **params)
    finally:
        bars.close()
    for name, why in result.removed_concepts.removed:
        print(f"removed concept '{printable(name)}': {why}", file=sys.stderr)
    _report_skipped(result.skipped_images)
    for warning in result.model.recipe.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    out = result.model.save(args.out, overwrite=args.overwrite)
    print(json.dumps({"bundle": str(out), "recipe": result.model.recipe.get("name"), **result.model.metrics}, indent=2))


def _load_pipeline(args):
    from .explain.pipeline import Pipeline

    return Pipeline.from_bundle(args.bundle, device=args.device, precision=args.precision,
                                trust_backbone=args.trust_backbone)


def _backbone(model, args):
    from .explain.pipeline import backbone_for

    return backbone_for(model, device=args.device, precision=args.precision, trust=args.trust_backbone)


MAX_INTERVENTION_BYTES = 1024 * 1024  # a hand-written or exported change list; far below this


def _read_intervention(path: str):
    """An intervention file, or a CBMError naming it: missing, not a file, too big, not UTF-8 JSON."""
    from .core.interventions import Intervention

    p = Path(path)
    try:
        if p.is_dir():
            raise CBMError(f"Intervention file '{path}' is a folder; give the .json file exported by the app.")
        if not p.is_file():
            raise CBMError(f"Intervention file '{path}' does not exist." if not p.exists() else
                           f"Intervention file '{path}' is not a regular file.")
        if p.stat().st_size > MAX_INTERVENTION_BYTES:
            raise CBMError(f"Intervention file '{path}' is larger than {MAX_INTERVENTION_BYTES // 1024} KB; "
                           "it is not an intervention.")
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise CBMError(f"Cannot read intervention file '{path}': {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise CBMError(f"Intervention file '{path}' is not UTF-8 text; it should be the .json file exported "
                       "by the app.") from None
    try:
        return Intervention.from_json(text)
    except CBMError as exc:
        raise CBMError(f"'{path}': {exc}") from None


def cmd_predict(args) -> None:
    from .errors import ImageError
    from .data.images import printable, read_image_bytes
    from .explain.reliability import reliability

    intervention = _read_intervention(args.intervention) if args.intervention else None  # before the slow load
    pipe = _load_pipeline(args)
    for concept in intervention.concepts if intervention else ():
        try:
            pipe.model.concepts.index(concept)
        except CBMError as exc:
            raise CBMError(f"'{args.intervention}' does not fit this model: {exc}") from None
    results, failed = [], False
    for path in args.images:
        try:
            data, name = read_image_bytes(path)  # one bounded read; folders and devices refused here
            encoded = pipe.encode(data, name)
            notes = list(encoded.notes)
            exp = pipe.explain_encoded([encoded], intervention)
        except ImageError as exc:
            results.append({"image": path, "error": str(exc)})
            failed = True
            continue
        top = exp.classes_frame(0, args.top)
        concepts = exp.to_frame(0).head(args.top)
        trust = reliability(pipe.model, exp, 0, embedding=encoded.embedding)  # how far to believe it
        believe = trust.to_frame().set_index("concept")
        results.append({"image": path, "prediction": top["class"][0],
                        "top_classes": top.to_dict(orient="records"),
                        "top_concepts": [{**c, "read_as": believe.loc[c["concept"], "read_as"],
                                          "p_present": float(believe.loc[c["concept"], "p_present"]),
                                          "flag": believe.loc[c["concept"], "flag"]} for c in
                                         concepts[["concept", "score", "percentile", "contribution"]].to_dict(orient="records")],
                        "notes": notes, "ood": trust.ood.to_dict(), "presence_from": trust.calibration.method,
                        "probably_absent": trust.probably_absent(args.top)})
    if args.json:
        print(json.dumps(results, indent=2))  # failed images too, in order, each with its reason
    else:
        for r in results:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
                continue
            for note in r["notes"]:
                print(f"note: {note}", file=sys.stderr)
            if r["ood"]["verdict"] != "typical":
                print(f"warning: {printable(r['image'])}: {r['ood']['message']}", file=sys.stderr)
            probs = ", ".join(f"{c['class']} {c['probability']:.1%}" for c in r["top_classes"])
            why = ", ".join(f"{c['concept']} ({c['contribution']:+.2f}, {c['read_as']}, p(present) {c['p_present']:.2f}"
                            + (f"; {c['flag']})" if c["flag"] else ")") for c in r["top_concepts"])
            print(f"{printable(r['image'])}: {r['prediction']}  [{probs}]\n    because: {why}")
            if r["probably_absent"]:
                print(f"    doubtful: {', '.join(r['probably_absent'])} (read as present, probably not there)")
            print(f"    image: {r['ood']['summary']}")
    if failed:
        raise SystemExit(1)


def cmd_evaluate(args) -> None:
    from .core.bundle import load_bundle
    from .analysis.evaluation import evaluate

    model = load_bundle(args.bundle)
    backbone = _backbone(model, args)
    data = _dataset(args.data, args.split, args.allow_outside_paths)
    feats = _features_for(model, backbone, data, args.quiet)
    m = evaluate(model, feats.embeddings, feats.labels, feats.groups)
    print(json.dumps({**m.to_dict(), **model.sparsity(), "skipped_images": len(feats.skipped)}, indent=2))


def _features_for(model, backbone, data, quiet: bool):
    """The dataset's features with labels in the model's class order (matched by name; classes the model lacks
    are refused before encoding)."""
    from .data.features import class_index, in_model_classes

    class_index(data.classes, model.classes)  # a class the model lacks is refused now, not after encoding
    return in_model_classes(_features(backbone, data, quiet), data.classes, model.classes)


def cmd_edit(args) -> None:
    from .core.bundle import bundle_exists, load_bundle
    from .analysis.edits import prune_concepts
    from .analysis.evaluation import compare

    if bundle_exists(args.out) and not args.overwrite:  # before any slow step
        raise CBMError(f"A bundle already exists at '{args.out}'. Choose another --out, or pass --overwrite to replace it.")
    model = load_bundle(args.bundle)
    result = prune_concepts(model, args.prune, args.only_class or None)  # names: any case; typos get a suggestion
    if args.data:
        backbone = _backbone(model, args)
        data = _dataset(args.data, args.split, args.allow_outside_paths)
        feats = _features_for(model, backbone, data, args.quiet)
        print(compare(model, result.model, feats.embeddings, feats.labels, feats.groups).to_string(index=False))
    out = result.model.save(args.out, overwrite=args.overwrite)
    print(f"saved edited bundle to {out} ({result.entry['op']}: {', '.join(result.entry['concepts'])})")


def cmd_compare(args) -> None:
    from .backbone import load_backbone
    from .analysis.comparison import DEFAULT_BASELINES, compare_recipes, stratified_split
    from .core.concepts import ConceptBank, check_templates, load_candidate_pool, load_vocabulary
    from .data.features import extract_features, require_every_class
    from .recipes import RecipeInputs, get_recipe

    recipes = {get_recipe(name).name: {} for name in (args.recipe or ["pcbm"])}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or name not in recipes:
            raise CBMError(f"--set {item!r}: write RECIPE.OPTION=VALUE for a recipe given with --recipe "
                           f"(e.g. lf-cbm.lam=7e-4).")
        recipes[name][option] = get_recipe(name).param(option).check(value, name)
    needs = {n for name in recipes for n in get_recipe(name).needs}
    templates = check_templates(args.template or ["{}"])
    data = _dataset(args.data, None, args.allow_outside_paths)
    bank = ConceptBank.from_file(args.concepts) if args.concepts else None
    pool = load_candidate_pool(args.pool, data.classes) if args.pool else None
    vocabulary = load_vocabulary(args.vocabulary) if args.vocabulary else None
    for flag, need, given in (("--concepts", "concepts", bank), ("--pool", "candidate_pool", pool),
                              ("--vocabulary", "vocabulary", vocabulary)):
        if need in needs and given is None:
            raise CBMError(f"A recipe you compare needs {flag}.")
    backbone = load_backbone(args.backbone, device=args.device, precision=args.precision)
    bars = _StageBars(args.quiet)
    try:
        if args.train_split:
            splits = [_dataset(args.data, s, args.allow_outside_paths) for s in (args.train_split, args.val_split, args.test_split)]
            train, val, test = [extract_features(backbone, d, progress=lambda n, t, s=s: bars(f"encoding {s} images", n / t))
                                 for d, s in zip(splits, ("training", "validation", "test"))]
            for part, name in zip((train, val, test), ("training", "validation", "test")):
                _report_skipped(part.skipped)
                require_every_class(part.labels, data.classes, name)
        else:
            feats = extract_features(backbone, data, progress=lambda n, t: bars("encoding images", n / t))
            _report_skipped(feats.skipped)
            train, val, test = stratified_split(feats, seed=args.seed, classes=data.classes)
        inputs = RecipeInputs(classes=tuple(data.classes), backbone_spec=backbone.spec, text=backbone.embed_prompts,
                              templates=templates, concepts=bank, candidate_pool=pool, vocabulary=vocabulary,
                              embed_dim=backbone.embed_dim)
        result = compare_recipes(train, val, test, inputs, recipes, nec=args.nec,
                                 baselines=() if args.no_baselines else DEFAULT_BASELINES, progress=bars)
    finally:
        bars.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    frame = result.to_frame()
    errors = frame.pop("error")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, error in zip(frame["recipe"], errors):
        if isinstance(error, str):
            print(f"{name} failed: {error}", file=sys.stderr)
    if all(r.error for r in result.rows if r.recipe in recipes):
        raise CBMError("Every recipe you asked to compare failed (reasons above).")



def cmd_info(args) -> None:
    from .core.bundle import load_bundle
    from .explain.reliability import summarize_stored

    model = load_bundle(args.bundle)
    recipe = dict(model.recipe)
    if isinstance(recipe.get("concept_dependencies"), dict):  # a table of numbers: say what it is, not all of it
        deps = recipe["concept_dependencies"]
        recipe["concept_dependencies"] = f"{deps.get('structure', '?')} model over {len(deps.get('names', []))} concepts"
    info = {"backbone": model.backbone_spec, "recipe": recipe, "classes": list(model.classes),
            "n_concepts": model.n_concepts, "concepts": list(model.concepts.names)[:20], **model.sparsity(),
            "metrics": summarize_stored(model.metrics),  # reliability fits in one line each, not every number
            "edit_log": [{**e, "metrics_before": summarize_stored(e["metrics_before"])} if isinstance(e.get("metrics_before"), dict)
                         else e for e in model.edit_log], "created": model.created}
    print(json.dumps(info, indent=2))
    auroc = model.metrics.get("concept_auroc")
    if isinstance(auroc, dict) and auroc:  # a concept-supervised bundle: how well each concept is predicted
        print(f"\nconcept AUROC ({model.metrics.get('concept_metrics_on', 'validation')}), worst first:", file=sys.stderr)
        for name, value in sorted(auroc.items(), key=lambda kv: (kv[1] is not None, kv[1] or 0.0)):
            print(f"  {value:.3f}  {name}" if value is not None else f"    n/a  {name} (one class only)", file=sys.stderr)


# -- test-time intervention and adaptation (explain/tti.py, core/propagation.py, analysis/adaptation.py) --
DEMO_DATA = ("demo:val", "demo:test", "demo-shifted:val", "demo-shifted:test")


def _labelled_features(model, args, data: str, split: str | None):
    """Encoded images with classes and 0/1 concept labels in ``model``'s concept order: a CSV with
    concept columns, or the demo's shipped features (``demo:val``, ``demo-shifted:test``, ...)."""
    import torch

    if data in DEMO_DATA:
        from .demo.world import CONCEPTS, SPECIES_NAMES

        if tuple(model.classes) != SPECIES_NAMES or model.backbone_spec != "demo":
            raise CBMError(f"'{data}' is Toy Birds data encoded by the demo backbone; this model reads "
                           f"'{model.backbone_spec}' embeddings into classes {list(model.classes)[:5]}...")
        kind, part = data.split(":")
        if kind == "demo":
            from .demo.paths import load_demo_features as load
        else:
            from .demo.shifted import load_shifted_features as load
        feats, names = load(part), tuple(CONCEPTS)
    else:
        backbone = _backbone(model, args)
        dataset = _dataset(data, split, args.allow_outside_paths)
        feats, names = _features_for(model, backbone, dataset, args.quiet), tuple(dataset.concept_names)
    if feats.concept_labels is None or not names:
        return feats, None
    missing = [n for n in model.concepts.names if n not in names]
    if missing:
        raise CBMError(f"The data has no concept column for {len(missing)} of the model's concepts "
                       f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}).")
    order = torch.tensor([names.index(n) for n in model.concepts.names])
    return feats, feats.concept_labels[:, order]


def cmd_intervene_curve(args) -> None:
    from .core.bundle import load_bundle
    from .core.propagation import ConceptDependencies
    from .explain.tti import intervention_curve, tune_coop

    args.policy = args.policy or ["random", "uncertainty", "expected_change", "coop"]
    model = load_bundle(args.bundle)
    feats, concept_labels = _labelled_features(model, args, args.data, args.split)
    if concept_labels is None:
        raise CBMError(f"'{args.data}' has no 0/1 concept columns: the simulated expert answers from them.")
    deps = ConceptDependencies.from_model(model) if args.propagate else None
    if args.propagate and deps is None:
        raise CBMError("This bundle keeps no concept dependencies to propagate with (build it with the 'supervised' "
                       "recipe).")
    coop = (1.0, args.coop_beta) if args.coop_beta is not None else None
    if coop is None and "coop" in args.policy:
        if args.tune_on is None:
            coop = (1.0, 1.0)
        else:
            tune, tune_labels = _labelled_features(model, args, args.tune_on, args.tune_split)
            coop, _ = tune_coop(model, tune.embeddings, tune.labels, tune_labels, dependencies=deps)
    curves = [intervention_curve(model, feats.embeddings, feats.labels, concept_labels, policy,
                                 max_answers=args.max_answers, dependencies=deps, seed=args.seed,
                                 coop=coop or (1.0, 1.0)) for policy in args.policy]
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "propagated": bool(deps), "coop": coop,
                                               "curves": [c.to_dict() for c in curves]}, indent=2))
    k = len(curves[0].accuracy)
    print("answers  " + "  ".join(f"{c.policy:>15}" for c in curves))
    for i in range(k):
        print(f"{i:>7}  " + "  ".join(f"{c.accuracy[i]:>15.1%}" for c in curves))
    if "coop" in args.policy:
        print(f"CooP weights: alpha {coop[0]:g}, beta {coop[1]:g}", file=sys.stderr)


def cmd_adapt(args) -> None:
    from .analysis.adaptation import AdaptationError, few_shot, propose_adaptation
    from .core.bundle import bundle_exists, load_bundle
    from .analysis.evaluation import evaluate

    if bundle_exists(args.out) and not args.overwrite:  # before any slow step
        raise CBMError(f"A bundle already exists at '{args.out}'. Choose another --out, or pass --overwrite to replace it.")
    model = load_bundle(args.bundle)
    target, _ = _labelled_features(model, args, args.target, args.target_split)
    pick = few_shot(target.labels, args.per_class, seed=args.seed) if args.per_class else None
    target_x, target_y = (target.embeddings[pick], target.labels[pick]) if pick is not None else (target.embeddings, target.labels)
    source = _labelled_features(model, args, args.source, args.source_split)[0] if args.source else None
    try:
        proposal = propose_adaptation(model, target_x, target_y,
                                      source_embeddings=source.embeddings if source is not None else None,
                                      source_labels=source.labels if source is not None else None,
                                      max_edits=args.max_edits)
        result = proposal.apply(model)
    except AdaptationError as exc:
        raise CBMError(str(exc)) from None
    print(f"from {proposal.n_images} labelled target images: target accuracy {proposal.target_before:.1%} -> "
          f"{proposal.target_after:.1%}" + (f"; source validation {proposal.source_before:.1%} -> "
                                            f"{proposal.source_after:.1%}" if source is not None else ""))
    for e in proposal.edits:
        print(f"  {e.describe()}  [effect {e.effect:+.3f}, activation target {e.target_activation:+.2f}"
              + (f" vs source {e.source_activation:+.2f}" if e.source_activation is not None else "") + "]")
    if args.test:
        test, _ = _labelled_features(model, args, args.test, args.test_split)
        print(f"held-out target data: {evaluate(model, test.embeddings, test.labels).accuracy:.1%} -> "
              f"{evaluate(result.model, test.embeddings, test.labels).accuracy:.1%}")
    out = result.model.save(args.out, overwrite=args.overwrite)
    print(f"saved adapted bundle to {out} (edit log: adapt, {len(proposal.mask)} masked, "
          f"{len(proposal.amplify)} amplified)")


def _build_description(recipe) -> str:
    from .recipes import list_recipes

    lines = ["Build a concept bottleneck model and save it as a bundle.", "", "Recipes:"]
    lines += [f"  {r.name:<10} {r.summary}" for r in list_recipes()]
    lines += ["", f"Options below are those of --recipe {recipe.name}."]
    return "\n".join(lines)


def cmd_extract(args) -> None:
    """Encode a dataset into a sharded, resumable feature store (in process, or on Ray)."""
    import os
    import time
    from contextlib import nullcontext

    from .backbone import load_backbone
    from .data.store import DEFAULT_SHARD_SIZE, write_store

    dataset = _dataset(args.data, args.split, args.allow_outside_paths)
    engine = "ray" if args.ray is not None else "inprocess"
    address = None
    if engine == "ray":
        from .data.ray_extract import ray_session

        # --ray alone: the cluster named by RAY_ADDRESS (set inside a Ray job) if any, else a local Ray
        address = args.ray or os.environ.get("RAY_ADDRESS") or None
        if address == "local":
            address = None
        session = ray_session(address, args.num_cpus)
    else:
        session = nullcontext()
    with session as ray:
        device, precision = args.device, args.precision
        if ray is not None:
            # the driver only fingerprints and ships the model; the encoders are Ray's (GPU ones in bf16)
            gpus = ray.cluster_resources().get("GPU", 0)
            device = device or "cpu"
            precision = precision or ("bf16" if gpus else "fp32")
            if not args.quiet:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                print(f"extracting on {where}: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs",
                      file=sys.stderr)
        backbone = load_backbone(args.backbone, device=device, precision=precision)
        t = time.perf_counter()
        store = write_store(backbone, dataset, args.store, engine=engine, address=address,
                            shard_size=DEFAULT_SHARD_SIZE if args.shard_size is None else args.shard_size,
                            batch_size=args.batch_size,
                            num_workers=args.workers, num_cpus=args.num_cpus, cache_dir=args.cache_dir,
                            progress_bar=not args.quiet)
        seconds = time.perf_counter() - t
    for shard in store.iter_shards():
        _report_skipped(shard.skipped)
    run = store.last_write
    print(json.dumps({"store": str(store.root), "key": store.key, "engine": engine, "images": store.n_records,
                      "encoded_rows": len(store), "skipped": store.n_skipped, "shards": store.n_shards,
                      "shards_written": len(run["written"]), "shards_reused": len(run["reused"]),
                      "shards_redone": run["redone"], "seconds": round(seconds, 2),
                      "images_per_second": round(run["encoded"] / seconds, 1) if run["encoded"] else None}, indent=2))


def cmd_report(args) -> None:
    """An explanation report for images (with the model card after it), or the model card alone."""
    from .data.images import printable
    from .report import browser
    from .report.export import RUNNER_UP, explanation_report, model_card

    suffix = Path(args.out).suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise CBMError(f"--out '{args.out}': a report is written as .html or .pdf.")
    if suffix == ".pdf" and browser.unavailable():  # before any slow step
        raise CBMError(f"{browser.unavailable()} Or write the report as .html.")
    intervention = _read_intervention(args.intervention) if args.intervention else None
    if args.images:
        pipe = _load_pipeline(args)  # asks for --trust-backbone where the bundle's backbone needs it
        model = pipe.model
        if args.saliency not in (None, *pipe.map_methods()):  # before the slow steps (the report checks it too)
            raise CBMError(f"--saliency {args.saliency}: this model's {pipe.backbone.kind} tower offers "
                           f"{', '.join(pipe.map_methods())}.")
    else:
        from .core.bundle import load_bundle

        model = load_bundle(args.bundle)
    evaluation, trust = None, None
    if args.data:
        evaluation, labels = _labelled_features(model, args, args.data, args.split)
        if args.images:
            trust = _reliability_fit(model, evaluation, labels, args.data)
    if args.images:
        report = explanation_report(pipe, args.images, intervention=intervention, spurious=args.spurious or (),
                                    counterfactual=args.counterfactual or RUNNER_UP, saliency=args.saliency,
                                    model_card_section=True, evaluation=evaluation, evaluation_name=args.data,
                                    title=args.title, reliability_model=trust)
    else:
        if intervention is not None or args.spurious:
            raise CBMError("--intervention and --spurious apply to images; name the images to explain.")
        report = model_card(model, evaluation=evaluation, evaluation_name=args.data, title=args.title)
    out = report.save(args.out)
    for name, reason in report.skipped:
        print(f"skipped {printable(name)}: {reason}", file=sys.stderr)  # a file name is a stranger's text
    print(f"wrote {out} ({report.kind}" + (f", {len(args.images) - len(report.skipped)} images" if args.images else "")
          + ")")
    if report.skipped:
        raise SystemExit(1)


def _reliability_fit(model, features, labels, name: str):
    """``model`` with its presence calibration and out-of-distribution reference fitted on ``features``
    (``labels``: their concept labels in the model's order, or None), unless its bundle stores them; None
    (the report then falls back to the model's training statistics) when the data is too small to fit."""
    import dataclasses

    from .explain.reliability import OOD_KEY, PRESENCE_KEY, fit_reliability, stored

    if stored(model, PRESENCE_KEY) is not None and stored(model, OOD_KEY) is not None:
        return model
    if labels is not None:
        features = dataclasses.replace(features, concept_labels=labels)
    try:
        return fit_reliability(model, features, label_names=model.concepts.names if labels is not None else None,
                               fitted_on=name)
    except (ValueError, CBMError) as exc:
        print(f"note: how far to believe each explanation is judged from the model's training statistics alone "
              f"({name} could not be used: {exc})", file=sys.stderr)
        return None


def _requested_recipe(argv) -> str:
    """The --recipe given on the command line (to generate that recipe's options), else pcbm."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="pcbm")
    name = pre.parse_known_args(argv)[0].recipe
    from .recipes import RECIPES

    return name if name in RECIPES else "pcbm"


def build_parser(recipe_name: str = "pcbm") -> argparse.ArgumentParser:
    from .recipes import RECIPES, get_recipe
    from .explain.pipeline import MAP_METHODS

    recipe = get_recipe(recipe_name)
    parser = argparse.ArgumentParser(prog="python -m cbm_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, bundle=True):
        if bundle:
            p.add_argument("--bundle", required=True, help="a bundle folder or .zip")
        p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if bundle:
            p.add_argument("--trust-backbone", action="store_true",
                           help="load the bundle's backbone even when it points at a local path or a hub repository "
                                "(only for bundles from a source you trust)")

    b = sub.add_parser("build", help="dataset + backbone + concepts -> a bundle, with any recipe",
                       description=_build_description(recipe), formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--recipe", default=recipe.name, choices=list(RECIPES),
                   help="how the model is built (default pcbm); `build --recipe NAME --help` lists its options")
    b.add_argument("--backbone", required=True, help="e.g. ViT-B-32:openai, hf-hub:org/repo, local-dir:/path, demo")
    b.add_argument("--data", required=True, help="a folder of class sub-folders, or a CSV manifest")
    b.add_argument("--train-split", default=None, help="with a CSV: the value of its 'split' column to train on")
    b.add_argument("--val", default=None, help="validation data (folder or CSV); default: 20%% of each class of --data")
    b.add_argument("--val-split", default=None, help="with a CSV: the 'split' value to validate on")
    b.add_argument("--allow-outside-paths", action="store_true",
                   help="with a CSV: accept image paths outside the CSV's folder (absolute or with ..)")
    inputs = b.add_argument_group(f"what {recipe.name} needs")
    if "concepts" in recipe.needs:
        inputs.add_argument("--concepts", required=True, help="concept list: .txt (one per line), .csv or .json")
        inputs.add_argument("--dedupe", type=float, default=None, metavar="COS",
                            help="drop near-duplicate concepts above this cosine")
        inputs.add_argument("--class-similarity", type=float, default=None, metavar="COS",
                            help="drop concepts closer than this to a class name")
    if "candidate_pool" in recipe.needs:
        inputs.add_argument("--pool", required=True, help="candidate sentences per class: 'class<TAB>sentence' lines")
    if "vocabulary" in recipe.needs:
        inputs.add_argument("--vocabulary", required=True, help="words / phrases to name learned concepts, one per line")
    if recipe.uses_text:
        inputs.add_argument("--template", action="append", help="prompt template with one {}, repeatable (averaged)")
    options = b.add_argument_group(f"{recipe.name} options")
    for param in recipe.params:
        kwargs = dict(default=None, help=f"{param.help} (default {param.default})")
        if param.type is bool:
            options.add_argument(param.flag, dest=param.name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            options.add_argument(param.flag, dest=param.name, metavar=param.type.__name__.upper(),
                                 choices=param.choices, **kwargs)
    if recipe.streams:
        b.add_argument("--stream", action="store_true",
                       help="train from --data's feature store (`extract` writes it) without loading it whole")
    b.add_argument("--out", required=True, help="bundle folder, or a path ending in .zip")
    b.add_argument("--overwrite", action="store_true", help="replace a bundle that already exists at --out")
    common(b, bundle=False)
    b.set_defaults(func=cmd_build, concepts=None, pool=None, vocabulary=None, template=None, dedupe=None,
                   class_similarity=None, stream=False)

    p = sub.add_parser("predict", help="images -> predictions and the concepts behind them")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--intervention", default=None, help="an intervention JSON file to apply")
    common(p)
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, per-class and worst-group accuracy on a dataset")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default=None, help="with a CSV: the 'split' value to evaluate on")
    e.add_argument("--allow-outside-paths", action="store_true",
                   help="with a CSV: accept image paths outside the CSV's folder (absolute or with ..)")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("edit", help="prune concepts globally and save a new bundle")
    d.add_argument("--prune", action="append", required=True, help="concept to prune, repeatable")
    d.add_argument("--only-class", action="append", help="prune only for this class, repeatable")
    d.add_argument("--data", default=None, help="show accuracy before/after on this data")
    d.add_argument("--split", default=None)
    d.add_argument("--allow-outside-paths", action="store_true",
                   help="with a CSV: accept image paths outside the CSV's folder (absolute or with ..)")
    d.add_argument("--out", required=True)
    d.add_argument("--overwrite", action="store_true")
    common(d)
    d.set_defaults(func=cmd_edit)

    c = sub.add_parser("compare", help="several recipes and the baselines on one feature cache, at matched sparsity")
    c.add_argument("--backbone", required=True, help="e.g. ViT-B-32:openai, local-dir:/path, demo")
    c.add_argument("--data", required=True, help="a folder of class sub-folders, or a CSV manifest")
    c.add_argument("--train-split", default=None, help="with a CSV: the 'split' values for training, validation "
                                                       "and test (give all three); default: 60/20/20 of each class")
    c.add_argument("--val-split", default="val")
    c.add_argument("--test-split", default="test")
    c.add_argument("--allow-outside-paths", action="store_true", help="with a CSV: accept paths outside its folder")
    c.add_argument("--recipe", action="append", help="a recipe to compare, repeatable (default: pcbm)")
    c.add_argument("--set", action="append", metavar="RECIPE.OPTION=VALUE", help="a recipe option, repeatable")
    c.add_argument("--concepts", default=None, help="concept list, for recipes that need one")
    c.add_argument("--pool", default=None, help="candidate sentences per class ('class<TAB>sentence'), for LaBo")
    c.add_argument("--vocabulary", default=None, help="words to name learned concepts with, for DN-CBM")
    c.add_argument("--template", action="append", help="prompt template with one {}, repeatable")
    c.add_argument("--nec", type=float, default=5.0, help="the sparsity to match: effective concepts per class")
    c.add_argument("--no-baselines", action="store_true", help="skip linear probe, random concepts and zero-shot")
    c.add_argument("--seed", type=int, default=0, help="seed of the 60/20/20 split")
    c.add_argument("--json", default=None, help="also write the full comparison (paths included) to this file")
    common(c, bundle=False)
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("info", help="summary of a bundle")
    i.add_argument("--bundle", required=True)
    i.set_defaults(func=cmd_info)

    data_help = ("a CSV with 0/1 concept columns, or the demo's shipped features: " + ", ".join(DEMO_DATA))
    v = sub.add_parser("intervene-curve", help="accuracy after k expert answers (from the data's concept labels), "
                                               "per question policy, for a concept-supervised bundle")
    v.add_argument("--data", required=True, help=data_help)
    v.add_argument("--split", default=None, help="with a CSV: the 'split' value to use")
    v.add_argument("--policy", action="append", choices=["random", "uncertainty", "expected_change", "coop"],
                   help="question policy, repeatable (default: all four)")
    v.add_argument("--max-answers", type=int, default=10, help="answers per image (default 10)")
    v.add_argument("--propagate", action="store_true", help="move correlated concepts after each answer")
    v.add_argument("--coop-beta", type=float, default=None, help="CooP's weight on the prediction change (alpha = 1)")
    v.add_argument("--tune-on", default=None, help="choose CooP's beta on this data (e.g. demo:val)")
    v.add_argument("--tune-split", default=None)
    v.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    v.add_argument("--json", default=None, help="also write the curves to this file")
    v.add_argument("--allow-outside-paths", action="store_true", help="with a CSV: accept paths outside its folder")
    common(v)
    v.set_defaults(func=cmd_intervene_curve, policy=None)

    a = sub.add_parser("adapt", help="repair a bundle for a new domain from a few labelled images, without training: "
                                     "mask mis-activated concepts, amplify under-activated ones")
    a.add_argument("--target", required=True, help="labelled images of the new domain: a folder of class sub-folders, "
                                                   "a CSV, or demo-shifted:val")
    a.add_argument("--target-split", default=None)
    a.add_argument("--per-class", type=int, default=4, help="draw this many target images per class (0: use all)")
    a.add_argument("--source", default=None, help="validation images of the original domain, so no edit costs accuracy "
                                                  "there (e.g. demo:val)")
    a.add_argument("--source-split", default=None)
    a.add_argument("--test", default=None, help="held-out target data to report accuracy on (e.g. demo-shifted:test)")
    a.add_argument("--test-split", default=None)
    a.add_argument("--max-edits", type=int, default=8)
    a.add_argument("--seed", type=int, default=0, help="seed of the per-class draw")
    a.add_argument("--out", required=True)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--allow-outside-paths", action="store_true", help="with a CSV: accept paths outside its folder")
    common(a)
    a.set_defaults(func=cmd_adapt)

    x = sub.add_parser("extract", help="encode a dataset into a sharded, resumable feature store (in process, or "
                                       "on Ray with --ray); also warms the cache that build and compare read")
    x.add_argument("--backbone", required=True, help="e.g. ViT-B-32:openai, local-dir:/path, demo")
    x.add_argument("--data", required=True, help="a folder of class sub-folders, or a CSV manifest")
    x.add_argument("--split", default=None, help="with a CSV: the 'split' value to encode")
    x.add_argument("--allow-outside-paths", action="store_true", help="with a CSV: accept paths outside its folder")
    x.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="encode on Ray Data (pip install -r requirements-scale.txt): alone, a local Ray (or the "
                        "cluster in RAY_ADDRESS, as inside a Ray job); with an address, that cluster, e.g. "
                        "ray://head:10001 or auto")
    x.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    x.add_argument("--store", default=None, help="the store folder (default: the feature cache, where build "
                                                 "and compare find it)")
    x.add_argument("--cache-dir", default=None, help="feature cache folder (default $CBM_CACHE_DIR/features)")
    x.add_argument("--shard-size", type=int, default=None, help="images per shard (default 4096)")
    x.add_argument("--batch-size", type=int, default=64, help="images per encoder batch (default 64)")
    x.add_argument("--workers", type=int, default=None, help="in process: DataLoader workers")
    common(x, bundle=False)
    x.set_defaults(func=cmd_extract)

    r = sub.add_parser("report", help="a self-contained report, HTML or PDF: why the model decides for images, and "
                                      "its model card (no images: the model card alone)")
    r.add_argument("images", nargs="*", help="images to explain")
    r.add_argument("--out", required=True, help="report.html, or report.pdf (the PDF needs chromium and "
                                                "Playwright, which requirements-dev.txt installs)")
    r.add_argument("--data", default=None, help="labelled held-out images to measure the model on for its card, and "
                                                "to judge how far to believe each explanation: a folder of class "
                                                "sub-folders, a CSV, or " + ", ".join(DEMO_DATA))
    r.add_argument("--split", default=None, help="with a CSV: the 'split' value to use")
    r.add_argument("--allow-outside-paths", action="store_true", help="with a CSV: accept paths outside its folder")
    r.add_argument("--spurious", action="append", metavar="CONCEPT",
                   help="a concept that is not a real property of any class (e.g. a background), repeatable: images "
                        "whose prediction leans on it are flagged")
    r.add_argument("--intervention", default=None, help="an intervention JSON file (exported by the app) to apply to "
                                                        "every image; the report shows its effect")
    r.add_argument("--counterfactual", default=None, metavar="CLASS",
                   help="show the fewest concept changes that make this class win (default: the runner-up)")
    r.add_argument("--saliency", default=None, choices=list(MAP_METHODS),
                   help="how the heat maps are computed (default: the tower's, layercam-fine on a ResNet and dense "
                        "on a ViT; layercam-fine and gradcam-fine need a ResNet tower)")
    r.add_argument("--title", default=None, help="the report's title")
    common(r)
    r.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_requested_recipe(argv)).parse_args(argv)
    try:
        args.func(args)
    except CBMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

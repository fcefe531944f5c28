"""``python -m cbm_core``: build, predict, evaluate, edit and inspect concept bottleneck models.

Examples::

    python -m cbm_core build --backbone ViT-B-32:openai --data photos/ --concepts concepts.txt --out my_cbm
    python -m cbm_core predict --bundle my_cbm bird1.jpg bird2.png
    python -m cbm_core evaluate --bundle my_cbm --data test_photos/
    python -m cbm_core edit --bundle my_cbm --prune "water" --out my_cbm_no_water --data val_photos/
    python -m cbm_core info --bundle my_cbm
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from .errors import CBMError


def _dataset(path: str, split: str | None):
    from .data import ImageDataset

    p = Path(path)
    return ImageDataset.from_csv(p, split=split) if p.suffix.lower() == ".csv" else ImageDataset.from_folder(p)


def _features(backbone, dataset, quiet: bool):
    from .data import extract_features

    feats = extract_features(backbone, dataset, progress_bar=not quiet)
    for path, reason in feats.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return feats


def cmd_build(args) -> None:
    from .backbone import load_backbone
    from .build import build_cbm
    from .concepts import ConceptBank

    bank = ConceptBank.from_file(args.concepts)
    backbone = load_backbone(args.backbone, device=args.device, precision=args.precision)
    train = _dataset(args.data, args.train_split)
    val = _dataset(args.val, args.val_split) if args.val else None
    bars = {}

    def progress(stage: str, fraction: float) -> None:
        if args.quiet or not stage.startswith("encoding"):
            return
        from tqdm.auto import tqdm

        bar = bars.setdefault(stage, tqdm(total=100, desc=stage, unit="%"))
        bar.n = int(fraction * 100)
        bar.refresh()

    result = build_cbm(backbone, train, bank, val=val, templates=args.template or ["{}"], lam=args.lam,
                       residual=args.residual, dedupe=args.dedupe, class_similarity=args.class_similarity,
                       progress=progress)
    for bar in bars.values():
        bar.close()
    for name, why in result.removed_concepts.removed:
        print(f"removed concept '{name}': {why}", file=sys.stderr)
    for path, reason in result.skipped_images:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    out = result.model.save(args.out, overwrite=args.overwrite)
    print(json.dumps({"bundle": str(out), **result.model.metrics}, indent=2))


def _load_pipeline(args):
    from .pipeline import Pipeline

    return Pipeline.from_bundle(args.bundle, device=args.device, precision=args.precision)


def cmd_predict(args) -> None:
    from .errors import ImageError
    from .interventions import Intervention

    pipe = _load_pipeline(args)
    intervention = Intervention.from_json(Path(args.intervention).read_text()) if args.intervention else None
    results, failed = [], False
    for path in args.images:
        try:
            exp = pipe.explain([path], intervention)
        except ImageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        top = exp.classes_frame(0, args.top)
        concepts = exp.to_frame(0).head(args.top)
        results.append({"image": path, "prediction": top["class"][0],
                        "top_classes": top.to_dict(orient="records"),
                        "top_concepts": concepts[["concept", "score", "percentile", "contribution"]].to_dict(orient="records")})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            probs = ", ".join(f"{c['class']} {c['probability']:.1%}" for c in r["top_classes"])
            why = ", ".join(f"{c['concept']} ({c['contribution']:+.2f})" for c in r["top_concepts"])
            print(f"{r['image']}: {r['prediction']}  [{probs}]\n    because: {why}")
    if failed:
        raise SystemExit(1)


def cmd_evaluate(args) -> None:
    from .backbone import load_backbone
    from .bundle import load_bundle
    from .evaluation import evaluate

    model = load_bundle(args.bundle)
    backbone = load_backbone(model.backbone_spec, device=args.device, precision=args.precision)
    data = _dataset(args.data, args.split)
    _check_classes(model, data)
    feats = _features(backbone, data, args.quiet)
    m = evaluate(model, feats.embeddings, feats.labels, feats.groups)
    print(json.dumps({**m.to_dict(), **model.sparsity(), "skipped_images": len(feats.skipped)}, indent=2))


def _check_classes(model, data) -> None:
    if tuple(data.classes) != tuple(model.classes):
        raise CBMError(f"The dataset's classes {list(data.classes)} differ from the model's {list(model.classes)}.")


def cmd_edit(args) -> None:
    from .bundle import load_bundle
    from .edits import prune_concepts
    from .evaluation import compare

    model = load_bundle(args.bundle)
    result = prune_concepts(model, args.prune, args.only_class or None)
    if args.data:
        from .backbone import load_backbone

        backbone = load_backbone(model.backbone_spec, device=args.device, precision=args.precision)
        data = _dataset(args.data, args.split)
        _check_classes(model, data)
        feats = _features(backbone, data, args.quiet)
        print(compare(model, result.model, feats.embeddings, feats.labels, feats.groups).to_string(index=False))
    out = result.model.save(args.out, overwrite=args.overwrite)
    print(f"saved edited bundle to {out} ({result.entry['op']}: {', '.join(result.entry['concepts'])})")


def cmd_info(args) -> None:
    from .bundle import load_bundle

    model = load_bundle(args.bundle)
    info = {"backbone": model.backbone_spec, "recipe": model.recipe, "classes": list(model.classes),
            "n_concepts": model.n_concepts, "concepts": list(model.concepts.names)[:20], **model.sparsity(),
            "metrics": model.metrics, "edit_log": list(model.edit_log), "created": model.created}
    print(json.dumps(info, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cbm_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, bundle=True):
        if bundle:
            p.add_argument("--bundle", required=True, help="a bundle folder or .zip")
        p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    b = sub.add_parser("build", help="dataset + concepts + backbone -> a bundle (PCBM recipe)")
    b.add_argument("--backbone", required=True, help="e.g. ViT-B-32:openai, hf-hub:org/repo, local-dir:/path, demo")
    b.add_argument("--data", required=True, help="a folder of class sub-folders, or a CSV manifest")
    b.add_argument("--train-split", default=None, help="with a CSV: the value of its 'split' column to train on")
    b.add_argument("--val", default=None, help="validation data (folder or CSV); default: 20%% of --data")
    b.add_argument("--val-split", default=None, help="with a CSV: the 'split' value to validate on")
    b.add_argument("--concepts", required=True, help="concept list: .txt (one per line), .csv or .json")
    b.add_argument("--template", action="append", help="prompt template with {}, repeatable (averaged)")
    b.add_argument("--lam", type=float, default=1e-3, help="elastic-net strength (higher = sparser)")
    b.add_argument("--residual", action="store_true", help="PCBM-h: add a residual head on the embedding")
    b.add_argument("--dedupe", type=float, default=None, metavar="COS", help="drop near-duplicate concepts above this cosine")
    b.add_argument("--class-similarity", type=float, default=None, metavar="COS",
                   help="drop concepts closer than this to a class name")
    b.add_argument("--out", required=True, help="bundle folder, or a path ending in .zip")
    b.add_argument("--overwrite", action="store_true")
    common(b, bundle=False)
    b.set_defaults(func=cmd_build)

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
    common(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("edit", help="prune concepts globally and save a new bundle")
    d.add_argument("--prune", action="append", required=True, help="concept to prune, repeatable")
    d.add_argument("--only-class", action="append", help="prune only for this class, repeatable")
    d.add_argument("--data", default=None, help="show accuracy before/after on this data")
    d.add_argument("--split", default=None)
    d.add_argument("--out", required=True)
    d.add_argument("--overwrite", action="store_true")
    common(d)
    d.set_defaults(func=cmd_edit)

    i = sub.add_parser("info", help="summary of a bundle")
    i.add_argument("--bundle", required=True)
    i.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CBMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

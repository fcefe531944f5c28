"""Train the Toy Birds vision-language model: a small open_clip CLIP, contrastively, on captioned birds.

    python -m cbm_core.demo.train_clip --out assets/demo_clip            # ~25 min on 2 CPU cores
    python -m cbm_core.demo.train_clip --out /tmp/clip --device cuda      # minutes on a GPU

open_clip's own ``CLIP`` class (a ModifiedResNet image tower, which learns part *shapes* where
a small ViT did not) and its ``ClipLoss``. Captions name random subsets of a bird's attributes,
shape attributes more often than colours (contrastive training takes the easy colour cues
first), the species in about half of them and the background in about a third. The result is
saved as a ``local-dir`` folder (``open_clip_config.json`` + safetensors) that
``load_backbone("demo")`` loads like any other open_clip model.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from multiprocessing import Pool

import numpy as np
import torch

from .splits import CONCEPT_TEMPLATE, IMAGE_SIZE
from .world import ATTRIBUTES, CONCEPTS, SPECIES_NAMES, generate, sample_bird

MODEL_NAME = "toybirds-rn"
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
SPECIES_TEMPLATE = "a photo of a {}."

# How each attribute value is said in a caption; concept names are used verbatim.
PHRASES = {
    "crown": "{} crown", "breast": "{} breast", "wing": "{} wing",
    "pattern": {"solid": "plain wing", "striped": "striped wing", "spotted": "spotted wing"},
    "beak": "{} beak", "tail": "{} tail", "crest": {"crest": "crest", "none": "no crest"},
    "legs": "{} legs", "eye": "{} eye", "size": "{} body",
}
# Shape cues are hard for contrastive learning; name them more often.
WEIGHTS = {"crown": 1.0, "breast": 1.0, "wing": 1.0, "pattern": 1.5, "beak": 3.0, "tail": 2.5,
           "crest": 1.5, "legs": 2.0, "eye": 1.5, "size": 0.5}


def phrase(attr: str, value: str) -> str:
    p = PHRASES[attr]
    return p[value] if isinstance(p, dict) else p.format(value)


SHAPES = ("beak", "tail", "legs", "crest")


def _listed(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(bird, rng: random.Random) -> str:
    """A random caption of ``bird``: 1-4 attribute phrases, maybe the species and background.

    A third of the captions name shape attributes only: colours cannot tell those captions
    apart, so the image tower has to encode beak, tail, legs and crest shapes."""
    attrs = list(SHAPES) if rng.random() < 0.35 else list(ATTRIBUTES)
    k = rng.choice((1, 1, 2, 3, 4))
    chosen = []
    pool = attrs[:]
    for _ in range(min(k, len(pool))):
        a = rng.choices(pool, weights=[WEIGHTS[x] for x in pool])[0]
        pool.remove(a)
        chosen.append(phrase(a, bird.attributes[a]))
    if rng.random() < 0.3:
        chosen.insert(rng.randrange(len(chosen) + 1), f"{bird.background} background")
    style = rng.random()
    if style < 0.12:
        return SPECIES_TEMPLATE.format(bird.species_name)
    if style < 0.4:
        return f"a {bird.species_name}, a bird with {_listed(chosen)}."
    return CONCEPT_TEMPLATE.format(_listed(chosen))


def sample_batch(birds, by_pair: dict, batch_size: int, rng: random.Random) -> list[int]:
    """Half the batch at random, half from one pair of twin species (same colours, other shapes):
    hard negatives that only shape, size and species names tell apart."""
    pair = rng.choice(list(by_pair))
    hard = rng.sample(by_pair[pair], batch_size // 2)
    rest = rng.sample(range(len(birds)), batch_size - len(hard))
    return hard + rest


def _render_chunk(args):
    split, start, stop, seed, size = args
    from .world import render

    return np.stack([np.asarray(render(sample_bird(seed, i, split), size)[0]) for i in range(start, stop)])


def render_split(split: str, n: int, seed: int, size: int, workers: int = 2) -> np.ndarray:
    chunks = [(split, s, min(n, s + 500), seed, size) for s in range(0, n, 500)]
    with Pool(workers) as pool:
        return np.concatenate(pool.map(_render_chunk, chunks))


def to_pixels(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties averaged)."""
    pos, neg = labels.sum(), len(labels) - labels.sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def score_report(image_emb: torch.Tensor, concept_emb: torch.Tensor, species_emb: torch.Tensor, birds) -> dict:
    """Zero-shot quality from unit-norm embeddings: per-concept AUROC of image-concept cosine
    (concept_emb rows follow ``CONCEPTS``) and species accuracy (species_emb rows follow ``SPECIES_NAMES``)."""
    names = list(CONCEPTS)
    scores = (image_emb @ concept_emb.T).numpy()
    truth = np.array([[b.concept_labels()[n] for n in names] for b in birds])
    per_concept = {n: auroc(scores[:, k], truth[:, k]) for k, n in enumerate(names)}
    species_acc = float(((image_emb @ species_emb.T).argmax(1).numpy() == np.array([b.species for b in birds])).mean())
    return {"mean_auroc": float(np.mean(list(per_concept.values()))), "min_auroc": float(min(per_concept.values())),
            "species_accuracy": species_acc, "per_concept_auroc": per_concept}


@torch.no_grad()
def zero_shot_report(model, tokenizer, birds, pixels, device) -> dict:
    """``score_report`` for an open_clip model in training."""
    model.eval()
    img = torch.cat([model.encode_image(pixels[i:i + 256].to(device), normalize=True).cpu()
                     for i in range(0, len(pixels), 256)])
    txt = model.encode_text(tokenizer([CONCEPT_TEMPLATE.format(n) for n in CONCEPTS]).to(device), normalize=True).cpu()
    sp = model.encode_text(tokenizer([SPECIES_TEMPLATE.format(s) for s in SPECIES_NAMES]).to(device), normalize=True).cpu()
    model.train()
    return score_report(img, txt, sp, birds)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/demo_clip")
    ap.add_argument("--n-train", type=int, default=24000, help="distinct training birds (rendered once)")
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--minutes", type=float, default=45.0, help="stop early after this long")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from ..backbone import export_local_dir, register_model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    register_model_config(MODEL_NAME, MODEL_CFG)
    model = open_clip.create_model(MODEL_NAME, output_dict=True).to(args.device)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    mean, std = model.visual.image_mean, model.visual.image_std

    t0 = time.time()
    print(f"rendering {args.n_train} training birds ...", flush=True)
    train_images = render_split("train", args.n_train, args.seed, IMAGE_SIZE)
    train_birds = [sample_bird(args.seed, i, "train") for i in range(args.n_train)]
    by_pair: dict[int, list[int]] = {}
    for i, b in enumerate(train_birds):  # species s and s + 4 are twins
        by_pair.setdefault(b.species % 4, []).append(i)
    val_birds, val_images = generate("val", 800, args.seed, IMAGE_SIZE)
    val_pixels = to_pixels(val_images, mean, std)
    print(f"rendered in {time.time() - t0:.0f}s", flush=True)

    steps = int(args.epochs * args.n_train / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    loss_fn = ClipLoss()
    start = time.time()
    history = []
    bar = tqdm(range(steps), desc="training", unit="step")
    for step in bar:
        idx = sample_batch(train_birds, by_pair, args.batch_size, rng)
        x = to_pixels(train_images[idx], mean, std)
        if rng.random() < 0.5:
            x = x.flip(-1)  # birds face both ways anyway; attributes do not change
        text = tokenizer([caption(train_birds[i], rng) for i in idx])
        out = model(x.to(args.device), text.to(args.device))
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 200 == 0 or step == steps - 1:
            rep = zero_shot_report(model, tokenizer, val_birds, val_pixels, args.device)
            history.append({"step": step + 1, "loss": loss.item(), **{k: rep[k] for k in ("mean_auroc", "min_auroc", "species_accuracy")}})
            worst = sorted(rep["per_concept_auroc"].items(), key=lambda kv: kv[1])[:3]
            print(f"\nstep {step + 1}: val mean AUROC {rep['mean_auroc']:.3f}, min {rep['min_auroc']:.3f} "
                  f"(worst {', '.join(f'{n} {v:.2f}' for n, v in worst)}), species acc {rep['species_accuracy']:.3f}", flush=True)
        if time.time() - start > args.minutes * 60:
            print(f"\nstopping at step {step + 1}: time limit of {args.minutes} minutes reached", flush=True)
            break
    model.eval()
    # Shipped in fp16 to halve the file; load_backbone casts to the requested precision.
    out_dir = export_local_dir(model, MODEL_CFG, args.out, half=True,
                               preprocess_cfg={"mean": list(mean), "std": list(std), "interpolation": "bicubic",
                                               "resize_mode": "shortest"})
    (out_dir / "training.json").write_text(json.dumps({
        "model": MODEL_NAME, "config": MODEL_CFG, "seed": args.seed, "n_train": args.n_train,
        "steps_run": step + 1, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
        "train_seconds": round(time.time() - start, 1), "history": history}, indent=2))
    print(f"saved {out_dir}", flush=True)


if __name__ == "__main__":
    main()

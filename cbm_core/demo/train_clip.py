"""Train the Toy Birds vision-language model: a small open_clip CLIP, contrastively, on captioned birds.

    python -m cbm_core.demo.train_clip --out runs/base_tower            # ~1 h on 2 CPU cores (resumable)
    python -m cbm_core.demo.train_clip --out /tmp/clip --device cuda     # minutes on a GPU

open_clip's own ``CLIP`` class (a ModifiedResNet image tower, which learns part *shapes* where
a small ViT did not) and its ``ClipLoss``. Captions name random subsets of a bird's attributes,
shape attributes more often than colours (contrastive training takes the easy colour cues
first), the species in about half of them and the background in about a third. The result is
saved as a ``local-dir`` folder (``open_clip_config.json`` + safetensors) that
``load_backbone("demo")`` loads like any other open_clip model.

Towers whose colour evidence is *local* (issue 13's hypothesis: a species' part colours co-occur
90 % of the time, so "red crown" can be read anywhere on a red bird) are trained with three knobs;
the base of the shipped tower (trained 2026-12-01) uses the defaults, 0.3 / 0.2 / 8 (docs/SALIENCY.md):

- ``--decorrelate F``: a share F of the training birds draw crown, breast, wing and eye colours
  independently (full independence, F = 1, taught the tower no colours at all: FINDINGS.md);
- ``--part-captions F``: a share F of the captions name one coloured part alone ("a bird with red crown.");
- ``--recolour-pairs N``: N birds of every batch also appear with one part recoloured (the same
  pixels elsewhere), each caption naming that part's colour: a hard negative only *where* tells apart.

The shipped tower (since 2026-12-02) is that tower fine-tuned with a *part-grounding* loss, because the
knobs above made colour evidence more local but not enough for a map to point at a crown, a beak or an eye:

    python -m cbm_core.demo.train_clip --init runs/base_tower --ground 0.6 --epochs 8 --lr 2e-4 --out assets/demo_clip

- ``--ground W``: each step also takes ``--ground-batch`` birds, one part concept each, and asks the
  LayerCAM of that concept's score at ResNet stage ``--ground-stage`` (the app's default map, 24 x 24 at
  96 px) to put its mass on the part's pixels (``grounding_loss``): the tower is taught *where* each
  concept is, as a spatial prior does for CBMs on CUB. The CBM built on it is trained as before.
- ``--init DIR``: start from a saved tower (a fine-tune), recorded with its own training record.

Long runs checkpoint (``--checkpoint DIR``, every ``--checkpoint-every`` steps and at the time
limit) and continue from there with ``--resume``: a run can span sessions on a 2-core machine.

    python -m cbm_core.demo.train_clip --out /tmp/local_clip --checkpoint runs/local_clip \
        --decorrelate 0.3 --part-captions 0.3 --recolour-pairs 16 --minutes 60          # then again with --resume

``--tower vit-p8`` swaps the ResNet for a small ViT whose last grid is 12 x 12 (the issue's finer grid);
``--image-size 192`` (or 384) gives the ResNet a 6 x 6 (12 x 12) last grid at 5x (33x) the step time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from .splits import CONCEPT_TEMPLATE, IMAGE_SIZE
from .world import ATTRIBUTES, CONCEPT_PART, CONCEPTS, SPECIES_NAMES, generate, render, sample_bird

MODEL_NAME = "toybirds-rn"
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
# Image towers to choose from (``--tower``): the shipped ResNet ends on a 3 x 3 grid at 96 px, which caps
# how well any dense map can point at a part (SALIENCY.md); a ViT with 8-pixel patches ends on 12 x 12.
TOWERS = {
    "resnet": (MODEL_NAME, MODEL_CFG),
    "vit-p8": ("toybirds-vit-p8", {**MODEL_CFG, "vision_cfg": {
        "image_size": IMAGE_SIZE, "patch_size": 8, "layers": 4, "width": 96, "head_width": 32}}),
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


COLOUR_PARTS = ("crown", "breast", "wing", "eye")


def training_bird(seed: int, index: int, decorrelate: float = 0.0):
    """Training bird ``index``; with probability ``decorrelate`` (its own seeded draw) its coloured
    parts take colours independently and uniformly instead of its species' typical ones."""
    bird = sample_bird(seed, index, "train")
    if decorrelate <= 0:
        return bird
    rng = random.Random(f"{seed}-decorrelate-{index}")
    if rng.random() >= decorrelate:
        return bird
    attrs = {**bird.attributes, **{a: rng.choice(ATTRIBUTES[a]) for a in COLOUR_PARTS}}
    return dataclasses.replace(bird, attributes=attrs)


def part_caption(bird, part: str) -> str:
    """A caption naming one coloured part alone."""
    return CONCEPT_TEMPLATE.format(phrase(part, bird.attributes[part]))


def recoloured(bird, rng: random.Random):
    """The same bird with one coloured part in another colour, and that part: pose, background and
    noise are unchanged, so only that part's pixels differ."""
    part = rng.choice(COLOUR_PARTS)
    colour = rng.choice([c for c in ATTRIBUTES[part] if c != bird.attributes[part]])
    return dataclasses.replace(bird, attributes={**bird.attributes, part: colour}), part


def sample_batch(birds, by_pair: dict, batch_size: int, rng: random.Random) -> list[int]:
    """Half the batch at random, half from one pair of twin species (same colours, other shapes):
    hard negatives that only shape, size and species names tell apart."""
    pair = rng.choice(list(by_pair))
    hard = rng.sample(by_pair[pair], batch_size // 2)
    rest = rng.sample(range(len(birds)), batch_size - len(hard))
    return hard + rest


# The parts the grounding loss points concepts at (``CONCEPT_PART``'s values), in a fixed order.
GROUND_PARTS = tuple(dict.fromkeys(CONCEPT_PART.values()))


def part_coverage(masks: dict, grid: int) -> np.ndarray:
    """Each of ``GROUND_PARTS``' pixel masks as the share of every cell of a grid x grid map it
    covers, in 1/255ths: (parts, grid, grid) uint8. Numpy only (it runs in forked workers)."""
    size = next(iter(masks.values())).shape[0]
    f = size // grid
    stack = np.stack([masks[p] for p in GROUND_PARTS]).astype(np.float32)
    cover = stack.reshape(len(GROUND_PARTS), grid, f, grid, f).mean(axis=(2, 4))
    return np.round(cover * 255).astype(np.uint8)


def _render_chunk(args):
    split, start, stop, seed, size, decorrelate, grid = args
    bird = (lambda i: training_bird(seed, i, decorrelate)) if split == "train" else (lambda i: sample_bird(seed, i, split))
    images, covers = [], []
    for i in range(start, stop):
        img, masks = render(bird(i), size)
        images.append(np.asarray(img))
        if grid:
            covers.append(part_coverage(masks, grid))
    return np.stack(images), (np.stack(covers) if grid else None)


def render_split(split: str, n: int, seed: int, size: int, workers: int = 2, decorrelate: float = 0.0,
                 grid: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(images (n, size, size, 3), and with ``grid`` each part's ``part_coverage`` (n, parts, grid, grid))."""
    chunks = [(split, s, min(n, s + 500), seed, size, decorrelate, grid) for s in range(0, n, 500)]
    with Pool(workers) as pool:
        done = pool.map(_render_chunk, chunks)
    return np.concatenate([d[0] for d in done]), (np.concatenate([d[1] for d in done]) if grid else None)


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


def _checkpoint_path(folder) -> Path:
    return Path(folder) / "checkpoint.safetensors"


def save_checkpoint(folder, step: int, model, opt, sched, rng: random.Random, history: list, args, seconds: float) -> None:
    """Everything needed to continue exactly: weights, optimiser and schedule, both random streams,
    the validation history and the options (a resume with other options is refused). Tensors in
    safetensors, the rest as JSON in its metadata: no pickle, even for our own files."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    plain_state = {}
    for i, st in opt_state["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{i}.{name}"] = value.contiguous().cpu()
            else:
                plain_state[f"{i}.{name}"] = value
    tensors["torch_rng"] = torch.get_rng_state()
    version, state, gauss = rng.getstate()
    meta = {"step": step, "seconds": seconds, "history": history, "options": _resumable_options(args),
            "opt_groups": opt_state["param_groups"], "opt_plain": plain_state,
            "sched": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
            "python_rng": [version, list(state), gauss]}
    path = _checkpoint_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path)  # a run killed while saving keeps the previous checkpoint


def _resumable_options(args) -> dict:
    """The options a resumed run must share with the run it continues (time limits may differ)."""
    keys = ("n_train", "epochs", "batch_size", "lr", "seed", "decorrelate", "part_captions", "recolour_pairs", "tower",
            "image_size", "init", "ground", "ground_stage", "ground_batch")
    return {k: getattr(args, k) for k in keys}


def read_checkpoint(folder) -> tuple[dict, dict]:
    """(tensors, metadata) of the checkpoint in ``folder``."""
    from safetensors import safe_open

    with safe_open(str(_checkpoint_path(folder)), "pt") as f:  # one read for the tensors and the metadata
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])


def load_checkpoint(folder, args, model, opt, sched, rng: random.Random) -> tuple[int, list, float]:
    """Restore a run saved by ``save_checkpoint``; returns (next step, history, seconds trained)."""
    tensors, meta = read_checkpoint(folder)
    meta["options"].setdefault("tower", "resnet")  # checkpoints from before --tower
    meta["options"].setdefault("image_size", IMAGE_SIZE)  # and from before --image-size
    for key, value in (("init", None), ("ground", 0.0), ("ground_stage", 1), ("ground_batch", 32)):
        meta["options"].setdefault(key, value)  # and from before grounding
    if meta["options"] != _resumable_options(args):
        raise SystemExit(f"--resume: the checkpoint in {folder} was made with {meta['options']}, "
                         f"not {_resumable_options(args)}; pass the same options.")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    for key, value in meta["opt_plain"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["opt_groups"]})
    sched.load_state_dict({**meta["sched"], "lr_lambdas": [None] * len(opt.param_groups)})
    version, values, gauss = meta["python_rng"]
    rng.setstate((version, tuple(values), gauss))
    torch.set_rng_state(tensors["torch_rng"])
    return meta["step"], meta["history"], meta["seconds"]


def training_batch(train_birds, train_images, idx, args, rng: random.Random, tokenizer, mean, std):
    """Pixels and tokens of one batch: the sampled birds, plus ``recolour_pairs`` of them again with
    one part recoloured (both captions then name that part's colour)."""
    images = train_images[idx]
    flip = rng.random() < 0.5  # drawn before the captions, as the shipped tower's run did
    captions = []
    for i in idx:
        bird = train_birds[i]
        if args.part_captions and rng.random() < args.part_captions:
            captions.append(part_caption(bird, rng.choice(COLOUR_PARTS)))
        else:
            captions.append(caption(bird, rng))
    extra_images = []
    for j in range(min(args.recolour_pairs, len(idx))):
        bird = train_birds[idx[j]]
        twin, part = recoloured(bird, rng)
        captions[j] = part_caption(bird, part)
        captions.append(part_caption(twin, part))
        extra_images.append(np.asarray(render(twin, args.image_size)[0]))
    if extra_images:
        images = np.concatenate([images, np.stack(extra_images)])
    x = to_pixels(images, mean, std)
    return (x.flip(-1) if flip else x), tokenizer(captions)  # birds face both ways; attributes do not change


def grounding_loss(visual, pixels: torch.Tensor, cover: torch.Tensor, text: torch.Tensor, stage: int):
    """The part-grounding term: where a concept's evidence lies, by the LayerCAM the app draws.

    For each image, the concept's cosine score with its unit text vector (``text``, (B, D)) is
    differentiated at the output of ResNet stage ``stage`` (keeping the graph, so the map itself is
    trained); the map ``relu(sum_c relu(dS/dA_c) A_c)`` should put its mass on the concept's part,
    ``cover`` (B, h, w) in [0, 1]. Returns (-log of the share on the part, averaged; that share)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..explain.saliency import resnet_tail, resnet_trunk

    act = resnet_trunk(visual, pixels, stage)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
        emb = resnet_tail(visual, act, stage)
    score = (torch.nn.functional.normalize(emb, dim=-1) * text).sum(-1)
    (grad,) = torch.autograd.grad(score.sum(), act, create_graph=True)
    cam = torch.relu((torch.relu(grad) * act).sum(1))
    share = (cam * cover).flatten(1).sum(1) / (cam.flatten(1).sum(1) + 1e-8)
    return -torch.log(share + 1e-4).mean(), share.detach().mean()


def grounding_batch(holders: list[list[int]], batch: int, rng: random.Random):
    """``batch`` (bird index, concept index, part index) triples: a part concept drawn uniformly,
    then a training bird that shows it (so small, rarer parts get their share)."""
    names = list(CONCEPT_PART)
    picks = []
    for _ in range(batch):
        k = rng.randrange(len(names))
        picks.append((rng.choice(holders[k]), k, GROUND_PARTS.index(CONCEPT_PART[names[k]])))
    return picks


def load_initial_weights(model, model_cfg: dict, folder) -> dict:
    """Start from a saved tower (``export_local_dir``'s folder) of the same configuration; returns
    its training record, kept with the new one's so the recipe stays traceable."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    if config != model_cfg:
        raise SystemExit(f"--init {folder}: its configuration {config} is not this run's {model_cfg}.")
    state = load_file(str(folder / "open_clip_model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    record = folder / "training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/demo_clip")
    ap.add_argument("--n-train", type=int, default=24000, help="distinct training birds (rendered once)")
    ap.add_argument("--epochs", type=float, default=28.0)
    ap.add_argument("--minutes", type=float, default=90.0, help="stop (and checkpoint) after this long in this run")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--decorrelate", type=float, default=0.3, help="share of training birds with independent part colours")
    ap.add_argument("--part-captions", type=float, default=0.2, help="share of captions naming one coloured part alone")
    ap.add_argument("--recolour-pairs", type=int, default=8, help="birds per batch shown again with one part recoloured")
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                    help="the tower's input in pixels, birds rendered at it (a ResNet's last grid is 1/32 of it)")
    ap.add_argument("--tower", choices=sorted(TOWERS), default="resnet",
                    help="image tower: the shipped ResNet (3 x 3 last grid) or a ViT with 8-px patches (12 x 12)")
    ap.add_argument("--init", default=None, help="start from this saved tower's weights (a fine-tune; same configuration)")
    ap.add_argument("--ground", type=float, default=0.0,
                    help="weight of the part-grounding loss: each part concept's LayerCAM should lie on its part")
    ap.add_argument("--ground-stage", type=int, default=1, choices=(1, 2, 3, 4),
                    help="the ResNet stage whose map is grounded (1: a 24 x 24 grid at 96 px)")
    ap.add_argument("--ground-batch", type=int, default=32, help="birds per step for the grounding loss")
    ap.add_argument("--n-val", type=int, default=800, help="validation birds for the zero-shot report")
    ap.add_argument("--checkpoint", default=None, help="folder for checkpoints (every --checkpoint-every steps)")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint")
    args = ap.parse_args(argv)
    if args.resume and not (args.checkpoint and _checkpoint_path(args.checkpoint).is_file()):
        raise SystemExit("--resume needs --checkpoint FOLDER holding a checkpoint from an earlier run.")
    stride = TOWERS[args.tower][1]["vision_cfg"].get("patch_size", 32)  # a ViT's patch, a ModifiedResNet's 32x
    if args.image_size < stride or args.image_size % stride:
        raise SystemExit(f"--image-size {args.image_size}: the {args.tower} tower needs a multiple of {stride} pixels.")
    if args.ground < 0 or (args.ground and args.tower != "resnet"):
        raise SystemExit("--ground needs a weight >= 0 and the ResNet tower (its stages give the grounded map).")
    ground_grid = args.image_size // (4 * 2 ** (args.ground_stage - 1)) if args.ground else 0  # stem 4x, then 2x a stage

    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from ..backbone import export_local_dir, register_model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model_name, model_cfg = TOWERS[args.tower]
    model_cfg = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "image_size": args.image_size}}
    register_model_config(model_name, model_cfg)
    model = open_clip.create_model(model_name, output_dict=True).to(args.device)
    tokenizer = open_clip.get_tokenizer(model_name)
    mean, std = model.visual.image_mean, model.visual.image_std
    init_record = load_initial_weights(model, model_cfg, args.init) if args.init else None
    if args.init:  # open_clip has just warned that it initialised the model randomly; it was, until now
        print(f"starting from the weights in {args.init}", flush=True)

    t0 = time.time()
    print(f"rendering {args.n_train} training birds ...", flush=True)
    train_images, train_cover = render_split("train", args.n_train, args.seed, args.image_size,
                                             decorrelate=args.decorrelate, grid=ground_grid)
    train_birds = [training_bird(args.seed, i, args.decorrelate) for i in range(args.n_train)]
    if args.ground:
        labels = [b.concept_labels() for b in train_birds]
        holders = [[i for i, lab in enumerate(labels) if lab[n]] for n in CONCEPT_PART]
        part_tokens = tokenizer([CONCEPT_TEMPLATE.format(n) for n in CONCEPT_PART])
    by_pair: dict[int, list[int]] = {}
    for i, b in enumerate(train_birds):  # species s and s + 4 are twins
        by_pair.setdefault(b.species % 4, []).append(i)
    val_birds, val_images = generate("val", args.n_val, args.seed, args.image_size)
    val_pixels = to_pixels(val_images, mean, std)
    print(f"rendered in {time.time() - t0:.0f}s", flush=True)

    steps = int(args.epochs * args.n_train / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    first, history, trained = 0, [], 0.0
    if args.resume:
        first, history, trained = load_checkpoint(args.checkpoint, args, model, opt, sched, rng)
        print(f"resumed at step {first} of {steps} ({trained / 60:.0f} min trained before)", flush=True)
    loss_fn = ClipLoss()
    start = time.time()
    step = first - 1
    bar = tqdm(range(first, steps), desc="training", unit="step", initial=first, total=steps)
    for step in bar:
        idx = sample_batch(train_birds, by_pair, args.batch_size, rng)
        x, text = training_batch(train_birds, train_images, idx, args, rng, tokenizer, mean, std)
        out = model(x.to(args.device), text.to(args.device))
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        postfix = {}
        if args.ground:
            picks = grounding_batch(holders, args.ground_batch, rng)
            gx = to_pixels(train_images[[i for i, _, _ in picks]], mean, std)
            cover = torch.from_numpy(np.stack([train_cover[i, p] for i, _, p in picks])).float() / 255.0
            if rng.random() < 0.5:
                gx, cover = gx.flip(-1), cover.flip(-1)
            text_vectors = model.encode_text(part_tokens.to(args.device), normalize=True)[[k for _, k, _ in picks]]
            ground, share = grounding_loss(model.visual, gx.to(args.device), cover.to(args.device), text_vectors,
                                           args.ground_stage)
            loss = loss + args.ground * ground
            postfix["on part"] = f"{share.item():.2f}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", **postfix)
        if (step + 1) % 200 == 0 or step == steps - 1:
            rep = zero_shot_report(model, tokenizer, val_birds, val_pixels, args.device)
            history.append({"step": step + 1, "loss": loss.item(), **{k: rep[k] for k in ("mean_auroc", "min_auroc", "species_accuracy")}})
            worst = sorted(rep["per_concept_auroc"].items(), key=lambda kv: kv[1])[:3]
            print(f"\nstep {step + 1}: val mean AUROC {rep['mean_auroc']:.3f}, min {rep['min_auroc']:.3f} "
                  f"(worst {', '.join(f'{n} {v:.2f}' for n, v in worst)}), species acc {rep['species_accuracy']:.3f}", flush=True)
        out_of_time = time.time() - start > args.minutes * 60
        if args.checkpoint and ((step + 1) % args.checkpoint_every == 0 or out_of_time or step == steps - 1):
            save_checkpoint(args.checkpoint, step + 1, model, opt, sched, rng, history, args,
                            trained + time.time() - start)
        if out_of_time:
            print(f"\nstopping at step {step + 1}: time limit of {args.minutes} minutes reached"
                  + (f"; continue with --resume --checkpoint {args.checkpoint}" if args.checkpoint else ""), flush=True)
            break
    model.eval()
    # Shipped in fp16 to halve the file; load_backbone casts to the requested precision.
    out_dir = export_local_dir(model, model_cfg, args.out, half=True,
                               preprocess_cfg={"mean": list(mean), "std": list(std), "interpolation": "bicubic",
                                               "resize_mode": "shortest"})
    (out_dir / "training.json").write_text(json.dumps({
        "model": model_name, "config": model_cfg, "seed": args.seed, "n_train": args.n_train,
        "steps_run": step + 1, "steps_planned": steps, "batch_size": args.batch_size, "lr": args.lr,
        "device": args.device, "decorrelate": args.decorrelate, "part_captions": args.part_captions,
        "recolour_pairs": args.recolour_pairs, "ground": args.ground,
        "ground_stage": args.ground_stage, "ground_batch": args.ground_batch, "init": args.init,
        "init_training": init_record,
        "train_seconds": round(trained + time.time() - start, 1),
        "history": history}, indent=2))
    print(f"saved {out_dir}", flush=True)


if __name__ == "__main__":
    main()

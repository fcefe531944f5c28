"""Backbones: any open_clip model behind one small interface.

Spec strings (``load_backbone(spec)``):

=================================  ===========================================================
``ViT-B-32:openai``                open_clip model name + pretrained tag (downloads once)
``ViT-B-32:/path/to/weights.pt``   open_clip model name + a local checkpoint file
``ViT-B-32:random``                random weights (timing and tests only)
``hf-hub:org/repo``                a model on the Hugging Face Hub, e.g. BiomedCLIP
``local-dir:/path``                a folder with ``open_clip_config.json`` + weights
``demo``                           the Toy Birds model shipped in ``assets/`` (see README)
=================================  ===========================================================

Model configs can be registered at run time with ``register_model_config`` (open_clip's JSON
format), which is how tests use tiny towers. Weights are cached under ``$CBM_CACHE_DIR/weights``
when that variable is set, else in open_clip's default cache.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import BackboneError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
SPEC_ALIASES = {"demo": f"local-dir:{ASSETS_DIR / 'demo_clip'}"}


@dataclass(frozen=True)
class ImageEncoding:
    """The output of ``Backbone.encode_images``.

    embeddings: (N, D) float32, unit norm — what concept scores are computed from.
    spatial:    (N, C, h, w) float32 or None — the last feature map before pooling
                (ViT: final block tokens without the class token, before ``ln_post``;
                ResNet: ``layer4`` output). Saliency maps are computed from it.
    """

    embeddings: torch.Tensor
    spatial: torch.Tensor | None = None


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def register_model_config(name: str, config: dict | str | Path) -> None:
    """Register an open_clip model config (a dict, or a path to its JSON) under ``name``."""
    import open_clip
    from open_clip import factory

    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if "vision_cfg" not in config or "text_cfg" not in config or "embed_dim" not in config:
        raise BackboneError(f"Model config '{name}' needs 'embed_dim', 'vision_cfg' and 'text_cfg'.")
    factory._MODEL_CONFIGS[name] = config
    assert name in open_clip.list_models()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into open_clip's ``(model_name, pretrained)``; see the module docstring."""
    spec = SPEC_ALIASES.get(spec.strip(), spec.strip())
    if not spec:
        raise BackboneError("The backbone spec is empty. Try 'ViT-B-32:openai' or 'demo'.")
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    name, sep, pretrained = spec.partition(":")
    if not sep or not pretrained:
        raise BackboneError(
            f"Backbone spec '{spec}' names no weights. Write MODEL:TAG (e.g. 'ViT-B-32:openai'), "
            f"MODEL:/path/to/checkpoint, or MODEL:random for untrained weights."
        )
    return name, (None if pretrained == "random" else pretrained)


def spec_needs_trust(spec: str) -> str | None:
    """Why loading ``spec`` — say, the backbone named in a bundle someone sent you — deserves the
    user's consent first, or None when it is harmless: the demo, random weights, or a plain open_clip
    model name with one of open_clip's own published pretrained tags. A local path or checkpoint, a
    ``local-dir:`` folder or an ``hf-hub:`` repository is what the *sender* chose: the app asks
    before loading it, the CLI needs ``--trust-backbone``."""
    try:
        name, pretrained = parse_spec(spec)
    except BackboneError as exc:
        return str(exc)
    if spec.strip() in SPEC_ALIASES:
        return None
    if name.startswith("local-dir:"):
        return f"it loads a model folder from this computer ('{name[len('local-dir:'):]}')"
    if name.startswith("hf-hub:"):
        return f"it downloads a model from the Hugging Face Hub repository '{name[len('hf-hub:'):]}'"
    import open_clip

    if name not in open_clip.list_models():
        return f"'{name}' is not one of open_clip's models"
    if pretrained is None:
        return None
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        return None
    return f"it loads a checkpoint file from this computer ('{pretrained}')"


def load_backbone(spec: str, device: str | torch.device | None = None,
                  precision: str | None = None, compile: bool = False) -> "Backbone":
    """Load an open_clip model for encoding; see the module docstring for ``spec``.

    device: ``None`` picks cuda, then mps, then cpu. precision: ``fp32`` (default on CPU),
    ``bf16`` (default on CUDA) or ``fp16``. compile: see ``Backbone.compile``.
    """
    import open_clip

    device = torch.device(device) if device is not None else default_device()
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise BackboneError(f"Unknown precision '{precision}'. Choose one of {', '.join(PRECISIONS)}.")
    model_name, pretrained = parse_spec(spec)
    _check_known(model_name, pretrained)
    cache_dir = os.environ.get("CBM_CACHE_DIR")
    cache_dir = str(Path(cache_dir) / "weights") if cache_dir else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device="cpu", cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except BackboneError:
        raise
    except Exception as exc:  # open_clip / hub errors are many and unhelpful; say what to do
        raise BackboneError(_load_failure_message(spec, model_name, pretrained, exc)) from exc
    model = model.to(device=device, dtype=PRECISIONS[precision]).eval()
    model.requires_grad_(False)
    backbone = Backbone(spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer,
                        device=device, precision=precision)
    return backbone.compile() if compile else backbone


def _check_known(model_name: str, pretrained: str | None) -> None:
    import open_clip

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneError(f"Folder '{folder}' has no open_clip_config.json; it is not an open_clip model folder.")
        return
    if model_name.startswith("hf-hub:"):
        return
    known = open_clip.list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See open_clip.list_models()."
        raise BackboneError(f"Unknown open_clip model '{model_name}'.{hint}")
    if pretrained and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise BackboneError(
                f"'{pretrained}' is neither a pretrained tag of {model_name} nor an existing file. "
                f"Known tags: {', '.join(tags) or 'none'}.")


def _load_failure_message(spec: str, model_name: str, pretrained: str | None, exc: Exception) -> str:
    text = str(exc)
    offline = any(s in text for s in ("offline", "Offline", "connect", "resolve", "LocalEntryNotFound",
                                      "download", "Network", "HTTP"))
    if offline or model_name.startswith("hf-hub:"):
        return (
            f"Could not get the weights of '{spec}': they are not in the local cache and could not be "
            f"downloaded ({type(exc).__name__}). On a machine with a network, run once: "
            f"python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained={pretrained!r})\" "
            f"(set CBM_CACHE_DIR to choose where weights go), or copy the weights here yourself and use "
            + ("'local-dir:/path' (a folder with the repo's open_clip_config.json and weights)."
               if model_name.startswith("hf-hub:") else f"'{model_name}:/path/to/checkpoint'.")
        )
    if "weights_only" in text or "pickle" in text.lower():
        # torch's advice here is to disable its safety check; never relay that.
        return (f"Could not load backbone '{spec}': its checkpoint is not a plain weights file (loading it would "
                f"need to run code from the file), and cbm_core does not load such files. Convert it to "
                f"safetensors on a machine you trust, or use another checkpoint.")
    return f"Could not load backbone '{spec}': {text[:500]}"


class Backbone:
    """A loaded open_clip model with batched, no-grad encoders.

    Read-only after construction, so one instance can serve several app sessions: the only
    mutable state is the text-embedding cache, which is guarded by a lock.
    """

    def __init__(self, spec, model, preprocess, tokenizer, device, precision):
        self.spec = spec
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        visual = model.visual
        self.kind = "vit" if hasattr(visual, "transformer") else ("resnet" if hasattr(visual, "attnpool") else "other")
        self.embed_dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])
        size = getattr(visual, "image_size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.resize_mode = cfg.get("resize_mode", "shortest") if isinstance(cfg, dict) else "shortest"
        self._text_cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._single = None  # compiled (encode_image, forward_intermediates) for one image; see compile()

    def __repr__(self) -> str:
        return f"Backbone({self.spec!r}, kind={self.kind}, device={self.device}, precision={self.precision})"

    @property
    def fingerprint(self) -> str:
        """Identifies the weights, for cache keys: the spec plus size/mtime of local weight files."""
        name, pretrained = parse_spec(self.spec)
        parts = [self.spec]
        for candidate in (pretrained, name.removeprefix("local-dir:")):
            if candidate and Path(candidate).exists():
                paths = sorted(Path(candidate).iterdir()) if Path(candidate).is_dir() else [Path(candidate)]
                parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths if p.is_file()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @torch.no_grad()
    def compile(self, mode: str | None = None) -> "Backbone":
        """Compile the image tower with ``torch.compile`` for single images — uploads and their
        maps, the app's latency path; batches (datasets) stay eager. Compiles now, on a dummy
        image, so that no session pays for it later and no two threads compile at once: 15-40 s
        for the demo model on 2 CPU cores, after which one image encodes ~1.3-1.7x faster there.
        ``mode`` is torch.compile's, e.g. ``"reduce-overhead"`` (CUDA graphs) on a GPU."""
        with self._lock:
            encode = torch.compile(self.model.encode_image, mode=mode, dynamic=False)
            intermediates = torch.compile(self.model.visual.forward_intermediates, mode=mode, dynamic=False)
            dummy = torch.zeros(1, 3, *self.image_size, device=self.device, dtype=self.dtype)
            encode(dummy)
            intermediates(dummy, indices=1)
            self._single = (encode, intermediates)
        return self

    @property
    def compiled(self) -> bool:
        return self._single is not None

    def preprocess_images(self, images: Sequence) -> torch.Tensor:
        """PIL images -> (N, 3, H, W) float32 tensor with the model's own transform."""
        return torch.stack([self.preprocess(img) for img in images])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, with_spatial: bool = False,
                      batch_size: int = 256) -> ImageEncoding:
        """Encode preprocessed images, pixels: (N, 3, H, W). Returns an ``ImageEncoding``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W); got {tuple(pixels.shape)}")
        embeddings, spatial = [], []
        for start in range(0, len(pixels), batch_size):
            x = pixels[start:start + batch_size].to(self.device, self.dtype, non_blocking=True)
            encode, intermediates = (self._single if self._single is not None and len(x) == 1
                                     else (self.model.encode_image, self.model.visual.forward_intermediates))
            if with_spatial:
                out = intermediates(x, indices=1)
                emb, fmap = out["image_features"], out["image_intermediates"][-1]
                spatial.append(fmap.float().cpu())
            else:
                emb = encode(x)
            embeddings.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return ImageEncoding(torch.cat(embeddings), torch.cat(spatial) if with_spatial else None)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, (M, D) float32 on CPU; cached per text."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            out = []
            for start in range(0, len(missing), 256):
                tokens = self.tokenizer(missing[start:start + 256]).to(self.device)
                emb = self.model.encode_text(tokens)
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
            with self._lock:
                self._text_cache.update(zip(missing, torch.cat(out)))
        with self._lock:
            return torch.stack([self._text_cache[t] for t in texts])

    def embed_prompts(self, names: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """Text vectors for ``names``, (K, D): each template filled, embedded, averaged, re-normalised."""
        from .core.concepts import check_templates

        templates = list(check_templates(templates))
        texts = [t.format(n) for n in names for t in templates]
        emb = self.encode_texts(texts).view(len(names), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(emb, dim=-1)


def export_local_dir(model: torch.nn.Module, model_cfg: dict, folder: str | Path,
                     preprocess_cfg: dict | None = None, half: bool = False) -> Path:
    """Save an open_clip model as a folder that ``load_backbone('local-dir:<folder>')`` loads:
    ``open_clip_config.json`` + ``open_clip_model.safetensors`` (fp16 when ``half``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder

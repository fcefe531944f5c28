"""Concept saliency: where in the image does the model see each concept?

One small class per method, one verb, captum-style: ``attribute(...) -> SaliencyMaps``.

- ``DenseConceptMaps`` (default, forward only): every spatial position of the last feature map
  goes through the model's own head — ViT: ``ln_post`` + ``proj``; open_clip ResNet: the
  attention pool's value and output projections (MaskCLIP) — and then through the model's concept
  layer (a cosine with text vectors, a learned projection, an SAE encoder: ``concept_layer.py``),
  exactly as the pooled embedding is. All K concepts at once. ``surgery=True`` removes the part
  that all concepts share at a position (CLIP Surgery-style).
- ``GradCAM``: gradients of each concept's score at the last block's input (ViT, class token
  dropped) or a ResNet stage; K concepts in ONE batched backward pass (see ``attribute``).
- ``LayerCAM``: the same gradients, kept per position rather than averaged: the fine-stage maps.
- ``Occlusion``: a perturbation audit for one concept — the score drop when a patch is greyed
  out, every patch position in batched forwards.

Maps come back on the model's input grid; ``SaliencyMaps.to_image`` undoes the resize and
centre crop so they overlay the original image. Nothing here registers hooks or changes the
model, so one model can serve many sessions at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..core.concept_layer import ConceptLayer, TextCosine


def as_layer(concepts: "ConceptLayer | torch.Tensor") -> ConceptLayer:
    """The layer a map reads (``ConceptLayer.for_maps``: a probability's log-odds), or (K, D) text vectors taken
    as a cosine layer."""
    if isinstance(concepts, ConceptLayer):
        return concepts.for_maps()
    return TextCosine(F.normalize(concepts.float(), dim=-1))


@dataclass(frozen=True)
class SaliencyMaps:
    """maps: (N, K, h, w) on the model input's grid; ``input_size`` the model's (H, W);
    ``method`` names the method; ``resize_mode`` is how the preprocess fitted the image
    (open_clip: ``shortest`` = resize + centre crop, ``longest`` = fit + pad, ``squash``).
    Values are comparable within one map, not across methods."""

    maps: torch.Tensor
    input_size: tuple[int, int]
    method: str
    resize_mode: str = "shortest"

    def to_image(self, image_size: tuple[int, int], out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Maps aligned with the original image (``image_size`` = PIL's (width, height)), at
        ``out_size`` (width, height; default the image size): (N, K, out_h, out_w). Parts of the
        image the model never saw (cropped away) get 0."""
        W, H = image_size
        ow, oh = out_size or image_size
        if self.resize_mode == "squash":
            return interpolate(self.maps, (oh, ow))
        if self.resize_mode == "longest":  # the image was fitted inside the square and padded
            side = max(W, H)
            full = interpolate(self.maps, (side, side))
            left, top = (side - W) // 2, (side - H) // 2
            return interpolate(full[..., top:top + H, left:left + W], (oh, ow))
        side = min(W, H)  # "shortest": the model saw the central side x side square
        left, top = (W - side) / 2.0, (H - side) / 2.0
        sx, sy = ow / W, oh / H
        x0, y0 = round(left * sx), round(top * sy)
        cw, ch = max(1, round(side * sx)), max(1, round(side * sy))
        crop = interpolate(self.maps, (ch, cw))
        out = torch.zeros(*self.maps.shape[:2], oh, ow, dtype=crop.dtype)
        xs, ys = slice(max(0, x0), min(ow, x0 + cw)), slice(max(0, y0), min(oh, y0 + ch))
        out[..., ys, xs] = crop[..., ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        return out


def interpolate(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (N, K, h, w) maps to ``size`` = (H, W)."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def _vit_token_head(visual, tokens: torch.Tensor) -> torch.Tensor:
    """ViT: final-block tokens (N, L, C) -> embedding space (N, L, D) via the model's own head."""
    x = visual.ln_post(tokens)
    return x @ visual.proj if visual.proj is not None else x


def _resnet_position_head(attnpool, fmap: torch.Tensor) -> torch.Tensor:
    """ResNet (MaskCLIP): layer4 map (N, C, h, w) -> per-position embeddings (N, h*w, D) through
    the attention pool's value and output projections, with its positional embedding resized."""
    N, C, h, w = fmap.shape
    x = fmap.flatten(2).transpose(1, 2)  # (N, hw, C)
    pos = attnpool.positional_embedding[1:].to(x.dtype)  # (s*s, C), s = native grid
    s = int(round(pos.shape[0] ** 0.5))
    if (h, w) != (s, s):
        pos = F.interpolate(pos.T.reshape(1, C, s, s), size=(h, w), mode="bicubic", align_corners=False)
        pos = pos.reshape(C, h * w).T
    v = F.linear(x + pos, attnpool.v_proj.weight, attnpool.v_proj.bias)
    return F.linear(v, attnpool.c_proj.weight, attnpool.c_proj.bias)


class DenseConceptMaps:
    """Forward-only maps for every concept at once.

    ``scale`` > 1 (ResNet towers) runs the convolutional trunk on the image enlarged by that
    factor for a finer grid (a 96 px image gives 3x3 at scale 1, 9x9 at scale 3), at the cost of
    that extra forward pass; at scale 1 the cached spatial features are reused and the maps cost
    only one matrix product."""

    method = "dense"

    def __init__(self, backbone: Backbone, surgery: bool = False, scale: int = 1):
        if scale != 1 and backbone.kind != "resnet":
            raise ValueError("scale > 1 needs a convolutional (ResNet) tower.")
        self.backbone, self.surgery, self.scale = backbone, surgery, scale

    @torch.no_grad()
    def spatial_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last feature map for preprocessed pixels (N, 3, H, W), at this method's scale."""
        bb = self.backbone
        x = pixels.to(bb.device, bb.dtype)
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return bb.model.visual.forward_intermediates(x, indices=1, intermediates_only=True)["image_intermediates"][-1]

    @torch.no_grad()
    def attribute(self, pixels: torch.Tensor | None, concepts: ConceptLayer | torch.Tensor,
                  spatial: torch.Tensor | None = None) -> SaliencyMaps:
        """pixels: (N, 3, H, W) preprocessed, or None when ``spatial`` — the cached (N, C, h, w)
        from ``Backbone.encode_images(with_spatial=True)`` — is given and scale is 1.
        concepts: the model's concept layer (or (K, D) text vectors). Returns the concept scores
        of every position, (N, K, h, w), in the layer's own units (a probability as its log-odds)."""
        visual = self.backbone.model.visual
        if spatial is None or self.scale != 1:
            if pixels is None:
                raise ValueError("Pass pixels (or cached spatial features at scale 1).")
            spatial = self.spatial_features(pixels)
        x = spatial.to(self.backbone.device, self.backbone.dtype)
        N, C, h, w = x.shape
        if self.backbone.kind == "vit":
            emb = _vit_token_head(visual, x.flatten(2).transpose(1, 2))
        elif self.backbone.kind == "resnet":
            emb = _resnet_position_head(visual.attnpool, x)
        else:
            raise NotImplementedError(f"Dense maps need a ViT or ResNet open_clip tower, not {type(visual).__name__}.")
        emb = F.normalize(emb.float(), dim=-1).cpu()
        maps = as_layer(concepts)(emb).transpose(1, 2).reshape(N, -1, h, w)
        if self.surgery:
            maps = maps - maps.mean(dim=1, keepdim=True)
        return SaliencyMaps(maps, self.backbone.image_size, "dense-surgery" if self.surgery else "dense",
                            self.backbone.resize_mode)


def resnet_trunk(visual, pixels: torch.Tensor, stage: int) -> torch.Tensor:
    """An open_clip ResNet tower up to the output of stage ``stage`` (1-4): (N, C, h, w)."""
    x = visual.stem(pixels)
    for block in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)[:stage]:
        x = block(x)
    return x


def resnet_tail(visual, activation: torch.Tensor, stage: int) -> torch.Tensor:
    """The rest of the tower from stage ``stage``'s output to the embedding: (N, D)."""
    x = activation
    for block in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)[stage:]:
        x = block(x)
    return visual.attnpool(x)


class GradCAM:
    """Grad-CAM of each concept's score; all K concepts in one batched backward pass.

    ``layer``: where the activation is taken. ViT: the input of block ``layer`` (default the last
    block; the class token is dropped). ResNet: the output of stage ``layer`` of 1-4 (default 4,
    the last; earlier stages give finer grids, 2x per stage, from a deeper tail)."""

    method = "gradcam"

    def __init__(self, backbone: Backbone, layer: int | None = None):
        self.backbone = backbone
        visual = backbone.model.visual
        if backbone.kind == "vit":
            n = len(visual.transformer.resblocks)
            self.layer = n - 1 if layer is None else layer
            if not 0 <= self.layer < n:
                raise ValueError(f"layer must be a block index in 0..{n - 1} for this ViT; got {layer}.")
        elif backbone.kind == "resnet":
            self.layer = 4 if layer is None else layer
            if self.layer not in (1, 2, 3, 4):
                raise ValueError(f"layer must be a ResNet stage, 1-4; got {layer}.")
        else:
            raise NotImplementedError(f"Grad-CAM needs a ViT or ResNet open_clip tower, not {type(visual).__name__}.")

    def _trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.backbone.model.visual
        if self.backbone.kind == "vit":
            x = visual._embeds(pixels)
            for block in visual.transformer.resblocks[:self.layer]:
                x = block(x)
            return x  # (N, L, C): the input of block ``layer``
        return resnet_trunk(visual, pixels, self.layer)

    def _tail(self, activation: torch.Tensor) -> torch.Tensor:
        visual = self.backbone.model.visual
        if self.backbone.kind == "vit":
            x = activation
            for block in visual.transformer.resblocks[self.layer:]:
                x = block(x)
            pooled, _ = visual._pool(x)
            return pooled @ visual.proj if visual.proj is not None else pooled
        return resnet_tail(visual, activation, self.layer)

    def attribute(self, pixels: torch.Tensor, concepts: ConceptLayer | torch.Tensor) -> SaliencyMaps:
        """pixels: (N, 3, H, W) preprocessed; concepts: the model's concept layer (or (K, D) text
        vectors). Returns (N, K, h, w)."""
        bb = self.backbone
        layer = as_layer(concepts).to(bb.device)
        K, D = layer.n_concepts, layer.embed_dim
        out = []
        for image in pixels:
            with torch.no_grad():
                act = self._trunk(image[None].to(bb.device, bb.dtype))
            act = act.detach().requires_grad_(True)
            with torch.enable_grad():
                emb = self._tail(act).float()  # (1, D)
            # Grad-CAM's channel weights (the spatial mean of d s_k / dA) are linear in the output
            # gradient d s_k / de. So min(K, D) vector-Jacobian products, batched in one backward
            # pass, give every concept its weights: the K output gradients themselves, or the D
            # basis vectors combined afterwards. (For a cosine layer, d s_k / de = (v_k - s_k ê) / |e|.)
            out_grads = _score_jacobian(layer, emb.detach()[0])  # (K, D)
            basis = out_grads if K <= D else torch.eye(D, device=bb.device)
            grads = self._vjps(act, emb, basis)  # (B, *act.shape[1:])
            out.append(self._maps(act.detach()[0].float(), grads, out_grads if K > D else None).cpu())
        return SaliencyMaps(torch.stack(out), bb.image_size, self.method, bb.resize_mode)

    def _maps(self, act: torch.Tensor, grads: torch.Tensor, combine: torch.Tensor | None) -> torch.Tensor:
        """One image's (K, h, w) maps from its activation and the batched gradients; ``combine`` (K, D)
        turns gradients of the D embedding dimensions into the K concepts' (None: already per concept)."""
        weights = self._channel_weights(grads)  # (B, C)
        if combine is not None:
            weights = combine @ weights
        return self._cam(act, weights)

    def _vjps(self, act: torch.Tensor, emb: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
        """(B, *act.shape[1:]): the gradient of ``cotangents[b] . emb`` with respect to ``act``."""
        try:
            (grads,) = torch.autograd.grad(emb, act, grad_outputs=cotangents[:, None, :], is_grads_batched=True)
            return grads[:, 0].float()
        except RuntimeError:  # an op without a vmap rule (some fused attention kernels): replicate instead
            rep = act.detach().expand(len(cotangents), *act.shape[1:]).clone().requires_grad_(True)
            with torch.enable_grad():
                (grads,) = torch.autograd.grad((self._tail(rep).float() * cotangents).sum(), rep)
            return grads.float()

    def _channel_weights(self, grads: torch.Tensor) -> torch.Tensor:
        """Spatial mean of activation gradients, (B, C); the ViT class token is left out."""
        if self.backbone.kind == "vit":
            return grads[:, 1:].mean(dim=1)  # grads: (B, L, C)
        return grads.mean(dim=(2, 3))  # grads: (B, C, h, w)

    def _cam(self, act: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """act: one image's activation; weights: (K, C). Returns (K, h, w)."""
        if self.backbone.kind == "vit":
            cam = F.relu(weights @ act[1:].T)  # act: (L, C) -> (K, L-1)
            side = int(round(cam.shape[1] ** 0.5))
            return cam.reshape(-1, side, side)
        return F.relu(torch.einsum("kc,chw->khw", weights, act))  # act: (C, h, w)


class LayerCAM(GradCAM):
    """LayerCAM (Jiang et al., 2021): each position's activations weighted by that position's own
    positive gradients, ``relu(sum_c relu(dS/dA_c) * A_c)``, rather than by the spatial mean that
    Grad-CAM takes. That keeps the gradients' location, so a map from an early, fine stage shows
    where the evidence is, not only which channels carry it. Same stages and cost as ``GradCAM``."""

    method = "layercam"

    def _maps(self, act: torch.Tensor, grads: torch.Tensor, combine: torch.Tensor | None) -> torch.Tensor:
        if combine is None:
            return self._cam_from_grads(act, grads)
        # Per-concept gradients are linear in the embedding's; combined a block of concepts at a time
        # so that memory stays bounded for thousands of concepts on a large tower.
        return torch.cat([self._cam_from_grads(act, torch.einsum("kd,d...->k...", block, grads))
                          for block in combine.split(128)])

    def _cam_from_grads(self, act: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        weighted = F.relu(grads.float()) * act[None]
        if self.backbone.kind == "vit":  # grads: (K, L, C); the class token is left out
            cam = F.relu(weighted[:, 1:].sum(-1))
            side = int(round(cam.shape[1] ** 0.5))
            return cam.reshape(-1, side, side)
        return F.relu(weighted.sum(1))  # (K, C, h, w) -> (K, h, w)


def _score_jacobian(layer: ConceptLayer, embedding: torch.Tensor) -> torch.Tensor:
    """d layer(e / |e|) / d e at one raw embedding (D,): (K, D), by reverse or forward mode,
    whichever needs fewer passes."""
    from torch.func import jacfwd, jacrev

    def scores(e):
        return layer(F.normalize(e, dim=-1)[None])[0]

    jac = jacrev if layer.n_concepts <= layer.embed_dim else jacfwd
    return jac(scores)(embedding.float()).detach()


class Occlusion:
    """Perturbation audit for one concept: grey out a ``window`` square sliding by ``stride``
    (input pixels) and record how much the concept's score drops, all positions batched."""

    method = "occlusion"

    def __init__(self, backbone: Backbone, window: int | None = None, stride: int | None = None, batch_size: int = 64):
        self.backbone = backbone
        H = backbone.image_size[0]
        self.window = window or max(4, H // 6)
        self.stride = stride or max(2, self.window // 2)
        self.batch_size = batch_size

    @torch.no_grad()
    def attribute(self, pixels: torch.Tensor, concept: ConceptLayer | torch.Tensor) -> SaliencyMaps:
        """pixels: (1, 3, H, W); concept: a one-concept layer (``layer.subset([k])``) or a text
        vector (D,). Returns (1, 1, H, W) score drops."""
        bb = self.backbone
        _, _, H, W = pixels.shape
        layer = as_layer(concept[None] if isinstance(concept, torch.Tensor) and concept.ndim == 1 else concept)
        if layer.n_concepts != 1:
            raise ValueError(f"Occlusion audits one concept at a time; got {layer.n_concepts}.")

        def score(embeddings):
            return layer(embeddings)[:, 0]

        base = float(score(bb.encode_images(pixels).embeddings)[0])
        ys = list(range(0, max(1, H - self.window) + 1, self.stride))
        xs = list(range(0, max(1, W - self.window) + 1, self.stride))
        boxes = [(y, x) for y in ys for x in xs]
        drops = []
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start:start + self.batch_size]
            batch = pixels.repeat(len(chunk), 1, 1, 1)
            for i, (y, x) in enumerate(chunk):
                batch[i, :, y:y + self.window, x:x + self.window] = 0.0  # 0 = the dataset mean after normalisation
            drops.append(base - score(bb.encode_images(batch).embeddings))
        drops = torch.cat(drops)
        heat = torch.zeros(H, W)
        count = torch.zeros(H, W)
        for (y, x), d in zip(boxes, drops.tolist()):
            heat[y:y + self.window, x:x + self.window] += d
            count[y:y + self.window, x:x + self.window] += 1
        return SaliencyMaps((heat / count.clamp_min(1))[None, None], bb.image_size, self.method, bb.resize_mode)


def class_maps(maps: SaliencyMaps, model_weight_row: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contribution-weighted sum of concept maps for one class, positive and negative parts apart.

    maps.maps: (N, K, h, w); model_weight_row: (K,) the class's head weights; z: (N, K) the
    standardised scores. Each concept map is weighted by its contribution ``w_k z_k``; returns
    ``(positive, negative)`` maps (N, h, w), both >= 0 — evidence for and against the class.
    """
    contrib = (model_weight_row[None, :] * z)[:, :, None, None]  # (N, K, 1, 1)
    m = maps.maps.clamp_min(0)
    m = m / m.flatten(2).amax(-1).clamp_min(1e-8)[..., None, None]  # each concept map in [0, 1]
    pos = (m * contrib.clamp_min(0)).sum(1)
    neg = (m * (-contrib).clamp_min(0)).sum(1)
    return pos, neg

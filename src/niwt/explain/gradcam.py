"""Grad-CAM (Selvaraju et al., ICCV 2017) at the importance layer, for any class of the joint space.

For image x, class c and layer activations ``A`` (K, h, w)::

    w_k = mean_ij d s_c / d A_kij          (the Grad-CAM neuron importance)
    L_c = relu(sum_k w_k A_k)              (h, w), bilinearly upsampled to the image

The layer is read with :class:`niwt.importance.capture.LayerCapture` (``detach=True``), so the
backward pass stops at the layer and never touches parameter gradients. The same backward also
yields the NIWT importance of the class (the *sum*-pooled gradient), which the textual explanation
maps to attributes: one forward and one backward give the logits, the heat map and the importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from niwt.data.images import IMAGENET_MEAN, IMAGENET_STD
from niwt.importance.capture import LayerCapture, Pooling, layer_gradient, pool
from niwt.models.layout import grid


@dataclass
class GradCam:
    """Per-image results of one Grad-CAM pass.

    Attributes:
        cam: (B, H, W) heat maps in [0, 1] (each divided by its own maximum; all-zero maps stay 0).
        raw: (B, h, w) un-normalised, un-upsampled ``relu(sum_k w_k A_k)``.
        importance: (B, K) pooled gradient of the target logit (``pooling`` of :func:`gradcam`).
        logits: (B, n_classes) detached logits of the forward pass.
        targets: (B,) the class each map explains.
    """

    cam: torch.Tensor
    raw: torch.Tensor
    importance: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


def gradcam(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor | int | None = None,
            pooling: Pooling = "sum") -> GradCam:
    """Grad-CAM of ``targets`` (default: each image's top-1 class) at ``layer``.

    Args:
        model: the network; put in eval mode for the call (restored afterwards).
        layer: dotted importance layer (``meta.layer`` of a checkpoint).
        images: (B, 3, H, W) normalised images, or (B, D) feature vectors for a network over
            precomputed features: Grad-CAM is not defined there, ``cam`` and ``raw`` are then (B, 0, 0)
            and only the importances and logits are returned.
        targets: (B,) class indices, one int for all images, or None for the predicted class.
            Any class of the classifier works, injected unseen classes included.
        pooling: reduction of the returned ``importance`` (``sum``: NIWT's alpha, ``mean``: Grad-CAM's).
    """
    was_training = model.training
    model.eval()
    try:
        if isinstance(targets, int):
            targets = torch.full((len(images),), targets, dtype=torch.long)
        with LayerCapture(model, layer, detach=True) as cap:
            grad, logits, targets = layer_gradient(model, cap, images, targets)
            act, layout = cap.activation, cap.layout
    finally:
        model.train(was_training)
    act = act.detach()
    if act.ndim == 2 and images.ndim == 2:  # a network over feature vectors: importances, no heat map
        empty = torch.zeros(len(images), 0, 0)
        return GradCam(empty, empty, pool(grad, pooling).float().cpu(), logits.detach().float().cpu(), targets.cpu())
    act_grid, grad_grid = grid(act, layout), grid(grad, layout)  # a ViT's patch tokens on the patch grid
    if act_grid.ndim != 4:
        raise ValueError(f"Grad-CAM needs a spatial (B, K, h, w) layer; {layer!r} gives {tuple(act.shape)}")
    weights = grad_grid.mean((2, 3))  # Grad-CAM's global-average-pooled gradients (over the patches)
    raw = F.relu((weights[:, :, None, None] * act_grid).sum(1))
    up = F.interpolate(raw[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    cam = (up / peak).clamp(0, 1)
    return GradCam(cam.float().cpu(), raw.float().cpu(), pool(grad, pooling).float().cpu(),
                   logits.detach().float().cpu(), targets.cpu())


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of one (3, H, W) tensor: (H, W, 3) floats in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(rgb: np.ndarray, cam: np.ndarray | torch.Tensor, floor: float = 0.3, tint: float = 0.2,
            cmap: str = "jet") -> np.ndarray:
    """A [0, 1] heat map shown on an (H, W, 3) image as a spotlight: (H, W, 3) floats in [0, 1].

    Each pixel keeps its own colour, darkened towards ``floor`` where the map is low, with a light tint
    (``tint``) of the heat colour where it is high. A half-and-half jet blend hid the object's colour (a
    red fox under jet's red looked like any other class); here the important region shows it as it is.
    """
    import matplotlib

    weight = np.clip(np.asarray(cam, dtype=np.float64), 0, 1)[..., None]
    heat = matplotlib.colormaps[cmap](weight[..., 0])[..., :3]
    lit = rgb * (floor + (1 - floor) * weight)
    return np.clip((1 - tint * weight) * lit + tint * weight * heat, 0, 1)

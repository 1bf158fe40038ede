"""Where a layer's neurons are: every layer seen by NIWT as a map (B, C, *positions).

Importance pooling, the head Jacobian and Grad-CAM all read a layer's output as channels first,
positions after: a CNN's (B, C, H, W) as it is, a feature network's (B, C) as it is. Transformers lay
theirs out otherwise, and are *packed* into that form at the cut (the importance hook and the
trunk/head split both use :func:`pack` / :func:`unpack`, so extraction and injection see one layout):

* Swin (``swin_t``, ``swin_v2_t``, ...) keeps (B, H, W, C) channels-last maps: packed by a permutation.
* ViT (``vit_b_16``, ...) keeps (B, T, C) tokens, the class token first and the patch tokens after it
  in row-major grid order: packed as (B, C, T). The importance of neuron k is the gradient of the
  class logit summed over the *patch* tokens: the head sees the class token through ``detach``, so
  its gradient is zero and sum pooling over the T positions is the sum over patches. Why the class
  token is left out: it stands at no place of the image (Grad-CAM cannot put it on the patch grid),
  and at late blocks its gradient is the classifier row itself passed through the final LayerNorm
  (the degenerate direction of :mod:`niwt.importance.degenerate`), which would otherwise dominate
  every importance. Mean pooling divides by T (class token included, contributing zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Kind = Literal["map", "hwc", "tokens"]


@dataclass(frozen=True)
class Layout:
    """How one layer's output is laid out. ``prefix``: tokens before the patches (ViT's class token)."""

    kind: Kind = "map"
    prefix: int = 0

    def describe(self) -> str:
        return {"map": "channels x positions", "hwc": "height x width x channels (packed to channels first)",
                "tokens": f"tokens x channels, {self.prefix} class token(s) then the patch grid"}[self.kind]


MAP = Layout()


def pack_hwc(t: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), a view."""
    return t.permute(0, 3, 1, 2)


def unpack_hwc(m: torch.Tensor) -> torch.Tensor:
    return m.permute(0, 2, 3, 1)


def pack_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, C, T), a view."""
    return t.transpose(1, 2)


def unpack_tokens(m: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, C, T) -> (B, T, C) with the first ``prefix`` tokens (the class token) detached: no gradient
    reaches them, so pooling over all T positions pools the patch tokens alone."""
    return torch.cat([m[:, :, :prefix].detach(), m[:, :, prefix:]], 2).transpose(1, 2)


def pack(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The layer's output as (B, C, *positions) (a view: no copy)."""
    if layout.kind == "hwc":
        return pack_hwc(t)
    if layout.kind == "tokens":
        return pack_tokens(t)
    return t


def unpack(m: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of :func:`pack`, for the network above the layer (tokens: the class token detached)."""
    if layout.kind == "hwc":
        return unpack_hwc(m)
    if layout.kind == "tokens":
        return unpack_tokens(m, layout.prefix)
    return m


def grid(m: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A packed (B, C, *positions) tensor on the image's grid (B, C, h, w): tokens lose the prefix and
    their patches are laid out row by row (ViT's square patch grid)."""
    if layout.kind != "tokens":
        return m
    patches = m[:, :, layout.prefix:]
    side = math.isqrt(patches.shape[2])
    if side * side != patches.shape[2]:
        raise ValueError(f"{patches.shape[2]} patch tokens do not form a square grid")
    return patches.unflatten(2, (side, side))


def layer_layout(model: nn.Module, layer: str) -> Layout:
    """The layout of ``layer``'s output in ``model`` (a ``NiwtNet``; anything else is a plain map).

    ViT: everything in ``body.encoder`` is tokens (the patch projection ``body.conv_proj`` is a map).
    Swin: everything in ``body.features`` and ``body.norm`` is channels-last, except the patch
    embedding's convolution ``body.features.0.0``.
    """
    body = getattr(model, "body", None)
    if body is None or not layer.startswith("body."):
        return MAP
    import sys

    models = sys.modules.get("torchvision.models")
    if models is None:  # no torchvision network can exist in this process: not imported (it costs seconds)
        return MAP
    if isinstance(body, models.VisionTransformer) and (layer == "body.encoder" or layer.startswith("body.encoder.")):
        return Layout("tokens", prefix=1)
    if isinstance(body, models.SwinTransformer) and layer != "body.features.0.0" and (
            layer in ("body.features", "body.norm") or layer.startswith("body.features.")):
        return Layout("hwc")
    return MAP

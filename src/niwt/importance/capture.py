"""Neuron importance: gradient of a class logit w.r.t. one layer's activations, pooled over space.

For image x and class c, ``alpha_k(x) = sum_ij d s_c(x) / d A_kij(x)`` (NIWT; Grad-CAM uses the
mean). The layer is captured with a *forward* hook only: module backward hooks break on in-place
ReLUs (pytorch#61519). The hook hands the rest of the network a fresh leaf tensor, so
``torch.autograd.grad`` stops at the layer (no backward through the trunk, no parameter ``.grad``
touched), and in-place ops downstream act on a copy, never on the stored activation.

In ``eval()`` mode samples do not interact, so one backward of the *sum* of each sample's own
selected logit gives every per-sample gradient of a batch at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import nn

from niwt.models.layout import layer_layout, pack, unpack
from niwt.models.networks import ModelError, canonical_layer, resolve_layer

Pooling = Literal["sum", "mean"]


class LayerCapture:
    """Context manager that records one layer's output on every forward pass.

    Args:
        model: the network.
        layer: dotted module name (``body.block4``); unknown names list the valid ones.
        detach: hand downstream a new leaf (gradients stop at the layer). Set False to keep the
            graph to the input, e.g. for double backprop through the whole network.

    ``activation`` is the output packed channels first (:mod:`niwt.models.layout`: a transformer's
    tokens or channels-last map become (B, C, *positions)); the network above reads it unpacked. A
    ViT's class token reaches the network above through ``detach`` in both modes: with
    ``detach=False`` gradients reach the input through the patch tokens only.
    """

    def __init__(self, model: nn.Module, layer: str, detach: bool = True) -> None:
        self.module = resolve_layer(model, layer)
        self.layout = layer_layout(model, canonical_layer(model, layer))
        self.detach = detach
        self.activation: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):  # attention returning (output, weights), a dict, ...
            raise ModelError(f"importance layer {type(module).__name__} returns a {type(output).__name__}, not one "
                             "tensor: choose the block around it")
        packed = pack(output, self.layout)
        act = packed.detach().requires_grad_(True) if self.detach else packed
        self.activation = act
        return unpack(act.clone(), self.layout)  # in-place ops downstream must not touch the stored tensor

    def __enter__(self) -> LayerCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.activation = None


def prepare_for_extraction(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """Put a model private to extraction in its fastest exact state, in place.

    Eval mode; parameters frozen, so autograd records nothing below the captured layer (no
    max-pool indices, no saved inputs in the trunk: only the head is differentiated);
    optionally channels-last memory format (oneDNN's vectorised conv and pooling path, about 2x
    on this CPU; feed images with :func:`to_model_format`). Importances change only in the last
    float bits.
    """
    model.eval().requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def to_model_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``images`` in the memory format :func:`prepare_for_extraction` gave the model."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.ndim == 4 else images


def pool(grad: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Reduce (B, C, *spatial) gradients to (B, C) by sum (NIWT) or mean (Grad-CAM)."""
    dims = tuple(range(2, grad.ndim))
    if not dims:
        return grad
    return grad.sum(dims) if pooling == "sum" else grad.mean(dims)


def layer_gradient(
    model: nn.Module,
    capture: LayerCapture,
    images: torch.Tensor,
    targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of each image's target logit w.r.t. the captured layer, in one forward + one backward.

    Args:
        targets: (B,) class per image, or None for each image's predicted class.

    Returns:
        (gradient like the layer's output, logits (B, n_classes) detached, targets (B,)).
    """
    with torch.enable_grad():
        logits = model(images)
        if targets is None:
            targets = logits.argmax(1)
        targets = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
        if len(targets) and (targets.min() < 0 or targets.max() >= logits.shape[1]):
            raise ValueError(f"target classes must be in [0, {logits.shape[1]}), got {targets.tolist()}")
        selected = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, capture.activation)
    return grad, logits.detach(), targets


def batch_importance(
    model: nn.Module,
    capture: LayerCapture,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    pooling: Pooling = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importances of a batch in one forward and one backward.

    Args:
        model: network in eval mode, with ``capture`` entered.
        capture: the active :class:`LayerCapture`.
        images: (B, 3, H, W).
        targets: (B,) class index per image, or None for each image's predicted class.
        pooling: spatial reduction.

    Returns:
        (importances (B, C) float32 on CPU, logits (B, n_classes) detached).
    """
    grad, logits, _ = layer_gradient(model, capture, images, targets)
    return pool(grad, pooling).float().cpu(), logits


def importance(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    pooling: Pooling = "sum",
) -> torch.Tensor:
    """Convenience wrapper: (B, C) importances of ``images`` for ``targets`` at ``layer``."""
    was_training = model.training
    model.eval()
    try:
        with LayerCapture(model, layer) as cap:
            return batch_importance(model, cap, images, targets, pooling)[0]
    finally:
        model.train(was_training)


def loader_importances(model: nn.Module, loader, layer: str, pooling: Pooling, target: str,
                       channels_last: bool = False,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Importances of every image of ``loader`` (batches of (images, labels, index)), in order.

    ``model`` is prepared by :func:`prepare_for_extraction`. ``target``: ``ground_truth`` (the
    image's label's logit) or ``predicted`` (its argmax). Returns ((N, C) float32 importances,
    (N,) the class whose logit each one is of).
    """
    device = next(model.parameters()).device
    parts, targets = [], []
    with LayerCapture(model, layer) as cap:
        for images, labels, _ in loader:
            wanted = labels.to(device) if target == "ground_truth" else None
            images = to_model_format(images.to(device), channels_last)
            alpha, logits = batch_importance(model, cap, images, wanted, pooling)
            parts.append(alpha.numpy())
            targets.append((labels if wanted is not None else logits.argmax(1)).cpu().numpy())
            if progress is not None:
                progress(len(labels))
    return np.concatenate(parts), np.concatenate(targets)

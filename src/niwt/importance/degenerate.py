"""Refuse the degenerate importance layer: one with nothing nonlinear between it and the logits.

If the layer feeds only global (average) pooling and linear layers, the logit of class c is an
affine function of the activation, so its gradient -- the importance -- is the same vector for every
image (for ResNet's last stage: exactly c's weight row). NIWT then regresses weight rows: it still
runs, every stage exits 0, and its result means nothing about neurons. Two independent checks:

* by structure: :func:`niwt.models.graph.nonlinearity_after` finds no nonlinear op in the head;
* by value: the importance of every one of a few random inputs equals its class's classifier row
  (up to a positive scale), which also catches a nonlinearity that never switches (a ReLU on
  activations that are already non-negative).

Either one refuses the layer with the explanation unless ``extract.allow_degenerate`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from niwt.errors import InputError
from niwt.importance.capture import LayerCapture, batch_importance
from niwt.models.graph import nonlinearity_after
from niwt.models.layout import MAP, Layout, layer_layout
from niwt.models.networks import ModelError, NiwtNet, canonical_layer, example_input, split_at, takes_features


class DegenerateLayerError(InputError):
    """An importance layer whose importances cannot depend on the image."""


# A layer whose importances have a mean cosine of at least this with their class's classifier row is
# refused like a degenerate one. A linear path gives 1 exactly; a normalisation alone (ConvNeXt's last
# stage: LayerNorm and residual blocks above the layer) gives 0.999 on random weights; layers with a
# real nonlinearity above them stay far below (ResNet-18's layer4.0: 0.86, the MLP's first hidden: 0.04).
NEAR_DEGENERATE = 0.99


@dataclass(frozen=True)
class LayerVerdict:
    layer: str
    nonlinearity: str | None  # the first nonlinear op above the layer (None: a linear path to the logits)
    varies: bool | None  # importances of one class differ between inputs (None: not measured); a report only
    equals_weight_row: bool = False  # every importance is its class's classifier row (up to a scale)
    shape: tuple[int, ...] = ()  # the layer's output shape for one image, packed channels first
    # mean cosine between each image's importance and its class's classifier row (None: other widths)
    weight_row_cosine: float | None = None
    vanishes: bool = False  # every importance is zero: no gradient reaches the layer (a ViT's last block)
    layout: Layout = MAP

    @property
    def near_degenerate(self) -> bool:
        """Importances all but equal to the class's weight row: NIWT would be weight regression in disguise."""
        return self.weight_row_cosine is not None and self.weight_row_cosine >= NEAR_DEGENERATE

    @property
    def degenerate(self) -> bool:
        return self.nonlinearity is None or self.equals_weight_row or self.near_degenerate or self.vanishes


@dataclass(frozen=True)
class ValueCheck:
    """What the importances of a few random inputs show (:func:`by_value`)."""

    varies: bool  # importances of one target differ between inputs
    equals_rows: bool  # every importance is its target's classifier row up to a positive scale
    shape: tuple[int, ...]  # the layer's output per input, packed channels first
    cosine: float | None  # mean cosine between importances and their targets' rows (None: other widths)
    vanishes: bool  # every importance is exactly zero
    # mean cosine between the importances of one target on different inputs (1: the image does not matter);
    # defined at any width, a report only
    same_class_cosine: float = float("nan")


def by_value(model: NiwtNet, layer: str, image_size: int, pooling: str = "sum",
             n_images: int = 4, seed: int = 0) -> ValueCheck:
    """Measure the importances of ``n_images`` random inputs (targets cycling over the classes).

    A classifier that is all zeros (torchvision initialises a ViT's head so) would make every gradient
    zero whatever the layer: it is measured with a random classifier instead (restored afterwards).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = example_input(model, n_images, image_size, gen).to(device)
    n_classes = model.classifier.out_features
    same = torch.zeros(n_images, dtype=torch.long, device=device)
    cycled = torch.arange(n_images, device=device) % n_classes
    weight = model.classifier.weight
    saved = None if bool(weight.detach().any()) else weight.detach().clone()
    try:
        if saved is not None:
            with torch.no_grad():
                weight.copy_(torch.randn(weight.shape, generator=gen).mul_(0.02).to(weight))
        rows = weight.detach().double().cpu()[cycled.cpu()]
        with LayerCapture(model, layer) as cap:
            alpha, _ = batch_importance(model, cap, x, same, pooling)  # type: ignore[arg-type]
            shape = tuple(cap.activation.shape[1:])
            alpha_cycled, _ = batch_importance(model, cap, x, cycled, pooling)  # type: ignore[arg-type]
    finally:
        if saved is not None:
            with torch.no_grad():
                weight.copy_(saved)
        model.train(was_training)
    alpha = alpha.double()
    scale = alpha.abs().max().clamp_min(1e-30)
    varies = bool(((alpha - alpha[:1]).abs().max() / scale) > 1e-5)
    vanishes = not bool(alpha_cycled.any())
    equals_rows, mean_cos = False, None
    if rows.shape == alpha_cycled.shape:
        cos = torch.nn.functional.cosine_similarity(alpha_cycled.double(), rows, dim=1)
        equals_rows, mean_cos = bool((cos > 1 - 1e-6).all()), float(cos.mean())
    unit = torch.nn.functional.normalize(alpha, dim=1)
    pairs = unit @ unit.T
    same = float(pairs[~torch.eye(len(unit), dtype=torch.bool)].mean()) if len(unit) > 1 else float("nan")
    return ValueCheck(varies, equals_rows, shape, mean_cos, vanishes, same)


def inspect_layer(model: NiwtNet, layer: str, image_size: int, pooling: str = "sum",
                  measure: bool = True) -> LayerVerdict:
    """Both checks of one layer (the value check only when ``measure``)."""
    layer = canonical_layer(model, layer)
    layout = layer_layout(model, layer)
    _, head = split_at(model, layer)
    nonlinearity = nonlinearity_after(head)
    if not measure:
        return LayerVerdict(layer, nonlinearity, None, layout=layout)
    v = by_value(model, layer, image_size, pooling)
    return LayerVerdict(layer, nonlinearity, v.varies, v.equals_rows, v.shape, v.cosine, v.vanishes, layout)


def explain(verdict: LayerVerdict) -> str:
    how = []
    if verdict.vanishes:
        how.append("no gradient of the logits reaches it" + (
            " (the network reads only its class token above it: its patch tokens, where importance is measured, "
            "do not feed the classifier)" if verdict.layout.kind == "tokens" else " (every unit above it is off)"))
    if verdict.nonlinearity is None:
        how.append("only pooling and linear layers stand between it and the logits")
    if verdict.equals_weight_row:
        how.append("every image's importance equals its class's classifier row")
    elif verdict.near_degenerate:
        how.append(f"every image's importance is nearly its class's classifier row (mean cosine "
                   f"{verdict.weight_row_cosine:.4f} >= {NEAR_DEGENERATE})")
    return (f"importance layer {verdict.layer!r} is degenerate for NIWT: {'; '.join(how)}. The importance of a "
            "class would not depend on the image, so NIWT would only regress classifier rows. Choose a layer with "
            "a nonlinearity above it (an earlier block; `niwt layers --arch ARCH` marks them), or set "
            "extract.allow_degenerate: true to run it anyway")


def check_layer(model: NiwtNet, layer: str, image_size: int, pooling: str = "sum", allow: bool = False) -> LayerVerdict:
    """Refuse a degenerate layer with the explanation (or only return the verdict when ``allow``).

    Raises:
        DegenerateLayerError: the layer is degenerate and ``allow`` is False.
        ModelError: the layer's output is not a (C, H, W) map.
    """
    verdict = inspect_layer(model, layer, image_size, pooling)
    if takes_features(model) and len(verdict.shape) != 1:
        raise ModelError(f"importance layer {verdict.layer!r} outputs shape {list(verdict.shape)} per input; in a "
                         "network over feature vectors it must be a hidden layer (a vector of neurons)")
    if verdict.layout.kind == "tokens" and len(verdict.shape) != 2:
        raise ModelError(f"importance layer {verdict.layer!r} outputs shape {list(verdict.shape)} per image; a "
                         "transformer's importance layer must output tokens x channels (a block's output)")
    if not takes_features(model) and verdict.layout.kind != "tokens" and len(verdict.shape) != 3:
        raise ModelError(f"importance layer {verdict.layer!r} outputs shape {list(verdict.shape)} per image; an "
                         "importance layer must output channels x height x width (a convolutional feature map)")
    if verdict.degenerate and not allow:
        raise DegenerateLayerError(explain(verdict))
    return verdict


def check_structure(arch: str, layer: str, image_size: int, *, width: int = 32, hidden: int = 256,
                    allow: bool = False) -> LayerVerdict:
    """What can be known of ``extract.layer`` from the architecture alone, before any training: the layer
    exists in ``arch`` and a nonlinearity stands between it and the logits (weights do not change
    either). Run by ``fingerprint``, the first stage of every ``dvc repro``, so that a refused layer costs
    seconds rather than the fine-tuning and the validation grid that ``extract`` would otherwise follow.
    The checks that need trained weights (the weight-row cosine, a vanishing gradient) stay in ``extract``.

    Raises:
        ModelError: no such layer in ``arch`` (the message lists the valid ones).
        DegenerateLayerError: a linear path to the logits and not ``allow``.
    """
    from niwt.models.networks import build_model, importance_layer

    model = build_model(arch, 2, width=width, hidden=hidden, image_size=image_size,
                        in_features=8 if arch == "mlp" else None)  # the structure, not the sizes, matters here
    verdict = inspect_layer(model, importance_layer(model, arch, layer), image_size, measure=False)
    if verdict.nonlinearity is None and not allow:
        raise DegenerateLayerError(explain(verdict))
    return verdict

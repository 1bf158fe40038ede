"""Backbones as ``body`` (a chain of named modules ending in penultimate features) + ``classifier``.

NIWT needs two things from a network that plain torchvision models do not give directly:
the importance layer must be addressable by a stable dotted name (``body.relu5_3`` is VGG16's
conv5_3 after ReLU, as in the paper), and everything *above* that layer (the "head") must be
callable on its own, so injection can cache the activations once and differentiate only through
the head. Building every backbone as nested ``nn.Sequential`` chains gives both for free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from niwt.params import InputError


class ModelError(InputError):
    """A model that cannot be built or loaded as asked (unknown layer, missing weights, ...)."""


class NiwtNet(nn.Module):
    """A classifier split as ``classifier(body(x))``; ``body(x)`` are the penultimate features."""

    def __init__(self, body: nn.Sequential, classifier: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, n_classes)
        return self.classifier(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        return self.body(x)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # inplace ReLU on purpose: importance capture must survive it (pytorch#61519).
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        bn=nn.BatchNorm2d(c_out),
        relu=nn.ReLU(inplace=True),
    ))


def small_cnn(num_classes: int, width: int = 32, hidden: int = 256, image_size: int = 64,
              dropout: float = 0.3) -> NiwtNet:
    """A VGG-shaped CNN small enough to train from scratch on a laptop CPU in minutes.

    The importance layer ``body.block4`` (4*width channels at image_size/8) is followed by
    max-pooling and a ReLU hidden layer before the classifier, like conv5_3 -> fc6/fc7 in VGG16.
    That nonlinearity matters: were the layer followed only by global pooling and one linear
    layer, every image's importance would equal its class's weight row and NIWT would collapse
    into weight regression.
    """
    if image_size % 16:
        raise ModelError(f"smallcnn needs image_size divisible by 16, got {image_size}")
    w = width
    side = image_size // 16
    body = nn.Sequential(OrderedDict(
        block1=_conv_block(3, w), pool1=nn.MaxPool2d(2),
        block2=_conv_block(w, 2 * w), pool2=nn.MaxPool2d(2),
        block3=_conv_block(2 * w, 4 * w), pool3=nn.MaxPool2d(2),
        block4=_conv_block(4 * w, 4 * w), pool4=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc=nn.Linear(4 * w * side * side, hidden), relu=nn.ReLU(inplace=True), drop=nn.Dropout(dropout),
    ))
    return NiwtNet(body, nn.Linear(hidden, num_classes))


_VGG16_CFG = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def vgg16(num_classes: int, pretrained: bool = False) -> NiwtNet:
    """torchvision VGG16 with paper-style names: ``body.relu5_3`` is conv5_3 after ReLU (512 ch)."""
    import torchvision

    tv = torchvision.models.vgg16()
    if pretrained:
        tv.load_state_dict(_imagenet_state_dict("vgg16"))
    modules = iter(tv.features)
    named: OrderedDict[str, nn.Module] = OrderedDict()
    for b, block in enumerate(_VGG16_CFG, start=1):
        for i in range(1, len(block) + 1):
            named[f"conv{b}_{i}"] = next(modules)
            named[f"relu{b}_{i}"] = next(modules)
        named[f"pool{b}"] = next(modules)
    fc6, relu6, drop6, fc7, relu7, drop7, _ = tv.classifier
    named.update(avgpool=tv.avgpool, flatten=nn.Flatten(), fc6=fc6, relu6=relu6, drop6=drop6,
                 fc7=fc7, relu7=relu7, drop7=drop7)
    return NiwtNet(nn.Sequential(named), nn.Linear(4096, num_classes))


def resnet101(num_classes: int, pretrained: bool = False) -> NiwtNet:
    """torchvision ResNet-101; ``body.layer4.0`` is the first unit of the last stage (2048 ch)."""
    import torchvision

    tv = torchvision.models.resnet101()
    if pretrained:
        tv.load_state_dict(_imagenet_state_dict("resnet101"))
    body = nn.Sequential(OrderedDict(
        conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool, layer1=tv.layer1,
        layer2=tv.layer2, layer3=tv.layer3, layer4=tv.layer4, avgpool=tv.avgpool, flatten=nn.Flatten(),
    ))
    return NiwtNet(body, nn.Linear(2048, num_classes))


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from torchvision, with an actionable error instead of a hang offline."""
    import torchvision

    weights = {"vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
               "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V2}[arch]
    target = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, socket timeout, hash mismatch: all need the same fix
        raise ModelError(
            f"ImageNet weights for {arch} could not be loaded ({type(err).__name__}: {err}). "
            f"Download {weights.url} and place it at {target} (the torch hub cache, "
            "$TORCH_HOME/hub/checkpoints), or set model.pretrained: false.") from err


ARCHS = {"smallcnn": small_cnn, "vgg16": vgg16, "resnet101": resnet101}


def build_model(arch: str, num_classes: int, *, pretrained: bool = False, width: int = 32,
                hidden: int = 256, image_size: int = 64) -> NiwtNet:
    """Build a backbone by name (``params.model.arch``)."""
    if arch == "smallcnn":
        if pretrained:
            raise ModelError("smallcnn has no pretrained weights; set model.pretrained: false")
        return small_cnn(num_classes, width=width, hidden=hidden, image_size=image_size)
    if arch not in ARCHS:
        raise ModelError(f"unknown model.arch {arch!r}; valid: {sorted(ARCHS)}")
    return ARCHS[arch](num_classes, pretrained=pretrained)


def _cut_points(seq: nn.Sequential, prefix: str) -> Iterator[str]:
    for name, child in seq.named_children():
        if isinstance(child, nn.Flatten):
            return  # below here activations have no spatial extent: no importance layer
        path = f"{prefix}.{name}"
        if isinstance(child, nn.Sequential):
            yield from _cut_points(child, path)
        yield path


def importance_layers(model: NiwtNet) -> list[str]:
    """Every dotted name usable as ``model.layer``: spatial outputs on the body's chain."""
    return list(_cut_points(model.body, "body"))


def _split(seq: nn.Sequential, parts: list[str]) -> tuple[list[nn.Module], list[nn.Module]]:
    names = [n for n, _ in seq.named_children()]
    idx = names.index(parts[0])
    before, after = list(seq[:idx]), list(seq[idx + 1:])
    child = seq[idx]
    if len(parts) == 1:
        return before + [child], after
    inner_before, inner_after = _split(child, parts[1:])
    return before + inner_before, inner_after + after


def split_at(model: NiwtNet, layer: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut the body at ``layer``: ``head(trunk(x)) == model.features(x)``.

    Returns:
        (trunk, head); the modules are shared with ``model``, not copied.
    """
    valid = importance_layers(model)
    if layer not in valid:
        raise ModelError(f"unknown importance layer {layer!r}; valid layers: {', '.join(valid)}")
    trunk, head = _split(model.body, layer.split(".")[1:])
    return nn.Sequential(*trunk), nn.Sequential(*head)


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module at a dotted path, or a ModelError listing the valid importance layers."""
    modules = dict(model.named_modules())
    if layer not in modules:
        valid = importance_layers(model) if isinstance(model, NiwtNet) else sorted(modules)
        raise ModelError(f"unknown importance layer {layer!r}; valid layers: {', '.join(valid)}")
    return modules[layer]

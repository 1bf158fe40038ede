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

from niwt.errors import InputError


class ModelError(InputError):
    """A model that cannot be built or loaded as asked (unknown layer, missing weights, ...)."""


class NiwtNet(nn.Module):
    """A classifier split as ``classifier(body(x))``; ``body(x)`` are the penultimate features.

    ``in_features`` is None for image networks (input (B, 3, H, W)) and the input width of networks
    over precomputed feature vectors (``mlp``; input (B, in_features)).
    """

    def __init__(self, body: nn.Sequential, classifier: nn.Linear, in_features: int | None = None) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) or (B, in_features) -> (B, n_classes)
        return self.classifier(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # -> (B, D)
        return self.body(x)


def example_input(model: nn.Module, n: int, image_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` standard-normal inputs of the shape ``model`` takes: images, or feature vectors (``mlp``)."""
    width = getattr(model, "in_features", None)
    shape = (n, width) if width else (n, 3, image_size, image_size)
    return torch.randn(*shape, generator=generator)


def takes_features(model: nn.Module) -> bool:
    """Whether ``model`` reads precomputed feature vectors instead of images (no pixels, no Grad-CAM)."""
    return bool(getattr(model, "in_features", None))


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


def mlp(num_classes: int, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> NiwtNet:
    """A network over precomputed features (xlsa17's ResNet-101): features -> hidden -> ReLU -> hidden -> ReLU
    -> classifier, the fc6/fc7 shape above VGG16's conv5_3.

    The importance layer is ``body.relu1``, the first hidden layer after its nonlinearity: the second
    hidden layer's ReLU above it keeps its importances image-dependent (one linear layer to the
    logits would make every importance its class's weight row, and NIWT weight regression).
    """
    if in_features < 1:
        raise ModelError(f"mlp needs the feature width (in_features >= 1), got {in_features}")
    body = nn.Sequential(OrderedDict(
        fc1=nn.Linear(in_features, hidden), relu1=nn.ReLU(inplace=True), drop1=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, hidden), relu2=nn.ReLU(inplace=True), drop2=nn.Dropout(dropout),
    ))
    return NiwtNet(body, nn.Linear(hidden, num_classes), in_features=in_features)


_VGG16_CFG = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _vgg16_net(tv: nn.Module, classifier: nn.Linear) -> NiwtNet:
    """A torchvision VGG16's modules (shared, not copied) under paper-style names."""
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
    return NiwtNet(nn.Sequential(named), classifier)


def vgg16(num_classes: int, pretrained: bool = False) -> NiwtNet:
    """torchvision VGG16 with paper-style names: ``body.relu5_3`` is conv5_3 after ReLU (512 ch)."""
    import torchvision

    tv = torchvision.models.vgg16()
    if pretrained:
        tv.load_state_dict(_imagenet_state_dict("vgg16"))
    return _vgg16_net(tv, nn.Linear(4096, num_classes))


def _resnet101_net(tv: nn.Module, classifier: nn.Linear) -> NiwtNet:
    """A torchvision ResNet-101's modules (shared, not copied) as body + classifier."""
    body = nn.Sequential(OrderedDict(
        conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool, layer1=tv.layer1,
        layer2=tv.layer2, layer3=tv.layer3, layer4=tv.layer4, avgpool=tv.avgpool, flatten=nn.Flatten(),
    ))
    return NiwtNet(body, classifier)


def resnet101(num_classes: int, pretrained: bool = False) -> NiwtNet:
    """torchvision ResNet-101; ``body.layer4.0`` is the first unit of the last stage (2048 ch)."""
    import torchvision

    tv = torchvision.models.resnet101()
    if pretrained:
        tv.load_state_dict(_imagenet_state_dict("resnet101"))
    return _resnet101_net(tv, nn.Linear(2048, num_classes))


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from torchvision, with an actionable error instead of a hang offline."""
    import torchvision

    fixed = {"vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
             "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V2}
    weights = fixed[arch] if arch in fixed else torchvision.models.get_model_weights(arch).DEFAULT
    target = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, socket timeout, hash mismatch: all need the same fix
        raise ModelError(
            f"ImageNet weights for {arch} could not be loaded ({type(err).__name__}: {err}). "
            f"Download {weights.url} and place it at {target} (the torch hub cache, "
            "$TORCH_HOME/hub/checkpoints), or set model.weights: none.") from err


ARCHS = {"smallcnn": small_cnn, "mlp": mlp, "vgg16": vgg16, "resnet101": resnet101}
WEIGHTS_CHOICES = ("none", "imagenet")  # or a path to a state_dict the user trained


def torchvision_archs() -> list[str]:
    """Every classification model torchvision registers (``resnet18``, ``convnext_tiny``, ...)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _final_linear(tv: nn.Module, num_classes: int, arch: str) -> str:
    """Dotted name of the classifier layer of a torchvision model: its last ``nn.Linear`` with
    ``num_classes`` outputs (``fc``, ``classifier.6``, ``classifier.3``, ``heads.head``, ...)."""
    names = [n for n, m in tv.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise ModelError(f"model.arch {arch!r}: no final nn.Linear classifier layer found (a convolutional "
                         "classifier such as SqueezeNet's is not supported)")
    return names[-1]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def wrap_torchvision(arch: str, tv: nn.Module, num_classes: int) -> NiwtNet:
    """A torchvision classifier as ``NiwtNet`` sharing its modules: for ``vgg16`` / ``resnet101`` the
    paper-style named chains; for any other architecture the model itself as ``body``, its final
    linear layer replaced by ``nn.Identity`` and moved to ``classifier`` (layer names are then
    ``body.<torchvision module name>``, e.g. ``body.layer4.0``)."""
    if arch == "vgg16":
        return _vgg16_net(tv, tv.classifier[6])
    if arch == "resnet101":
        return _resnet101_net(tv, tv.fc)
    name = _final_linear(tv, num_classes, arch)
    linear = tv.get_submodule(name)
    _set_module(tv, name, nn.Identity())
    net = NiwtNet(tv, linear)
    net.torchvision_head = name  # where the classifier lives in the plain torchvision model
    return net


def _size_kwargs(arch: str, image_size: int) -> dict[str, int]:
    """A ViT is built for one image size (its position embedding has one entry per patch)."""
    if not arch.startswith("vit_"):
        return {}
    patch = int(arch.split("_")[2])  # vit_b_16, vit_h_14
    if image_size % patch:
        raise ModelError(f"{arch} cuts images into {patch}x{patch} patches: model.image_size must be a multiple of "
                         f"{patch}, got {image_size}")
    return {"image_size": image_size}


def _torchvision_model(arch: str, num_classes: int, weights: str, image_size: int = 224) -> nn.Module:
    import torchvision

    if arch not in torchvision_archs():
        raise ModelError(f"unknown model.arch {arch!r}; valid: smallcnn, mlp (over xlsa17 features), or a torchvision "
                         f"classification model: {', '.join(torchvision_archs())}")
    size = _size_kwargs(arch, image_size)
    if weights != "imagenet":
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **size)
    tv = torchvision.models.get_model(arch, weights=None, **size)
    state = _imagenet_state_dict(arch)
    if size:  # torchvision's own resampling of the position embedding to this grid (a no-op at the weights' own
        # size: 224 px, or 518 for vit_h_14's)
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(image_size, tv.patch_size, state)
    tv.load_state_dict(state)
    name = _final_linear(tv, 1000, arch)
    old = tv.get_submodule(name)
    _set_module(tv, name, nn.Linear(old.in_features, num_classes))
    return tv


def build_model(arch: str, num_classes: int, *, weights: str = "none", width: int = 32,
                hidden: int = 256, image_size: int = 64, in_features: int | None = None,
                state_dict: dict[str, torch.Tensor] | None = None, source: str = "model.weights") -> NiwtNet:
    """Build a backbone by name (``params.model.arch``).

    Args:
        in_features: ``mlp`` only: the width of the feature vectors it reads (from the data).
        weights: ``none`` (random init) or ``imagenet`` (torchvision's default weights; a new
            ``num_classes``-way classifier).
        state_dict: a plain state dict of the whole network in its usual layout (torchvision's
            keys; ``smallcnn``: niwt's), with a ``num_classes``-way classifier, loaded strictly.
        source: names the state dict's file in errors.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ModelError(f"model.weights {weights!r}: expected none, imagenet or a state_dict file")
    if arch in ("smallcnn", "mlp"):
        if weights == "imagenet":
            raise ModelError(f"{arch} has no pretrained weights; set model.weights: none")
        if arch == "mlp" and in_features is None:
            raise ModelError("model.arch mlp reads precomputed features (data.name: xlsa17); this data has images: "
                             "use smallcnn or a torchvision model")
        net = (mlp(num_classes, in_features, hidden=hidden) if arch == "mlp"  # type: ignore[arg-type]
               else small_cnn(num_classes, width=width, hidden=hidden, image_size=image_size))
        if state_dict is not None:
            _load_strict(net, state_dict, arch, num_classes, source)
        return net
    if arch in ARCHS and state_dict is None:
        return ARCHS[arch](num_classes, pretrained=weights == "imagenet")
    tv = _torchvision_model(arch, num_classes, weights, image_size)
    if state_dict is not None:
        _load_strict(tv, state_dict, arch, num_classes, source)
    return wrap_torchvision(arch, tv, num_classes)


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, num_classes: int,
                 source: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, KeyError) as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:4])[:600]
        raise ModelError(f"{source}: not a state_dict of {arch} with {num_classes} classes: {detail} "
                         "(the classifier must have one row per line of model.class_names)") from err


def plain_state_dict(model: NiwtNet, arch: str) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` in the layout of the plain network: torchvision's
    ``get_model(arch, num_classes=N).load_state_dict`` takes it as it is (``smallcnn``: niwt's own
    ``NiwtNet`` layout)."""
    own = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if arch in ("smallcnn", "mlp"):
        return own
    n = model.classifier.out_features
    with torch.device("meta"):  # no random init (no time, no draw from the global RNG): the weights are own
        tv = _torchvision_model(arch, n, "none", getattr(model.body, "image_size", 224))
    view = wrap_torchvision(arch, tv, n)
    view.load_state_dict(own, assign=True)
    if arch not in ("vgg16", "resnet101"):
        _set_module(tv, view.torchvision_head, view.classifier)
    return {k: v.detach() for k, v in tv.state_dict().items()}


def _cut_points(seq: nn.Sequential, prefix: str) -> Iterator[str]:
    for name, child in seq.named_children():
        if isinstance(child, nn.Flatten):
            return  # below here activations have no spatial extent: no importance layer
        path = f"{prefix}.{name}"
        if isinstance(child, nn.Sequential):
            yield from _cut_points(child, path)
        yield path


def _is_chain(model: NiwtNet) -> bool:
    """The built-in backbones: the body is a chain of named ``nn.Sequential`` modules."""
    return isinstance(model.body, nn.Sequential)


def importance_layers(model: NiwtNet, max_depth: int = 2) -> list[str]:
    """Dotted names usable as ``extract.layer``. Built-in backbones: the spatial outputs on the
    body's chain. Other torchvision models: the body's modules down to ``max_depth`` levels
    (``body.layer4``, ``body.layer4.0``; any deeper module name is accepted too)."""
    if _is_chain(model):
        return list(_cut_points(model.body, "body"))
    from torchvision.models.swin_transformer import SwinTransformerBlock
    from torchvision.models.vision_transformer import EncoderBlock

    return [f"body.{n}" for n, m in model.body.named_modules()
            if n and (n.count(".") < max_depth or isinstance(m, EncoderBlock | SwinTransformerBlock))
            and not isinstance(m, nn.Identity)]


AUTO_LAYER = "auto"
# The paper's layers for the built-in networks (VGG16 conv5_3 after ReLU, ResNet-101's first unit of its
# last stage) and the first hidden layer of the network over features.
DEFAULT_LAYERS = {"smallcnn": "body.block4", "mlp": "body.relu1", "vgg16": "body.relu5_3",
                  "resnet101": "body.layer4.0"}


def default_layer(model: NiwtNet, arch: str) -> str:
    """The importance layer ``extract.layer: auto`` stands for, by a rule per architecture family.

    * the built-in networks: :data:`DEFAULT_LAYERS` (the paper's layers);
    * a network with a ``layer4`` stage (torchvision's ResNets, ResNeXts, Wide ResNets): its first unit,
      ``body.layer4.0``, as the paper's ResNet-101 (the units above it keep ReLUs, so it is not degenerate);
    * a VGG (``vgg*``): the last ReLU of ``features``, conv5_3's (or conv5_4's) output;
    * a ConvNeXt or a Swin: the output of its third stage, ``body.features.<n-3>``, below the last
      downsampling (the last stage's residual blocks pass their input through, so the importance of
      anything above is its class's weight row up to a normalisation: mean cosine 0.999 on random weights);
    * a ViT: the block before the last, ``body.encoder.layers.encoder_layer_<L-2>``: its patch tokens reach
      the class token through the last block's attention and MLP (the last block's patch tokens reach
      nothing: the head reads the class token alone, so their importance is zero);
    * any other network whose body has a ``features`` chain (MobileNet, EfficientNet, DenseNet): the block
      before the last, ``body.features.<n-2>``, with the last block's nonlinearities above it.

    Anything else (RegNet, MaxViT) has no rule yet: a ModelError asks for ``extract.layer``.
    """
    if arch in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[arch]
    from torchvision.models import SwinTransformer, VisionTransformer

    body = model.body
    if isinstance(body, VisionTransformer) and len(body.encoder.layers) >= 2:
        return f"body.encoder.layers.encoder_layer_{len(body.encoder.layers) - 2}"
    if isinstance(getattr(body, "layer4", None), nn.Sequential):
        return "body.layer4.0"
    features = getattr(body, "features", None)
    if isinstance(features, nn.Sequential) and len(features) >= 2:
        if arch.startswith("vgg"):
            relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
            if relus:
                return f"body.features.{relus[-1]}"
        if (arch.startswith("convnext") or isinstance(body, SwinTransformer)) and len(features) >= 3:
            return f"body.features.{len(features) - 3}"
        return f"body.features.{len(features) - 2}"
    raise ModelError(f"extract.layer: auto has no rule for {arch!r} (no layer4 stage, no features chain); set "
                     "extract.layer to one of the layers `niwt layers --arch ARCH` lists")


def importance_layer(model: NiwtNet, arch: str, layer: str) -> str:
    """``extract.layer`` as a layer name: :func:`default_layer` for ``auto``, else the name as given."""
    return default_layer(model, arch) if layer == AUTO_LAYER else layer


def canonical_layer(model: nn.Module, layer: str) -> str:
    """``layer`` as a module name of ``model``; a torchvision name without ``body.`` is accepted."""
    modules = dict(model.named_modules())
    if layer not in modules and isinstance(model, NiwtNet) and f"body.{layer}" in modules:
        return f"body.{layer}"
    return layer


def _split(seq: nn.Sequential, parts: list[str]) -> tuple[list[nn.Module], list[nn.Module]]:
    names = [n for n, _ in seq.named_children()]
    idx = names.index(parts[0])
    before, after = list(seq[:idx]), list(seq[idx + 1:])
    child = seq[idx]
    if len(parts) == 1:
        return before + [child], after
    inner_before, inner_after = _split(child, parts[1:])
    return before + inner_before, inner_after + after


def _unknown(model: NiwtNet, layer: str) -> ModelError:
    valid = importance_layers(model)
    listing = ", ".join(valid[:60]) + (f", ... ({len(valid)} in all)" if len(valid) > 60 else "")
    return ModelError(f"unknown importance layer {layer!r}; valid layers: {listing} "
                      "(`niwt layers --arch ARCH` lists them with their shapes)")


def split_at(model: NiwtNet, layer: str) -> tuple[nn.Module, nn.Module]:
    """Cut the body at ``layer``: ``head(trunk(x)) == model.features(x)``.

    Built-in backbones are sliced (``nn.Sequential`` trunk and head); any other network is cut
    with ``torch.fx`` (:func:`niwt.models.graph.fx_split`).

    Returns:
        (trunk, head); the modules are shared with ``model``, not copied.
    """
    layer = canonical_layer(model, layer)
    if _is_chain(model):
        valid = importance_layers(model)
        if layer not in valid:
            raise _unknown(model, layer)
        trunk, head = _split(model.body, layer.split(".")[1:])
        return nn.Sequential(*trunk), nn.Sequential(*head)
    from niwt.models.graph import SplitError, fx_split

    if layer not in dict(model.named_modules()) or not layer.startswith("body."):
        raise _unknown(model, layer)
    from niwt.models.layout import layer_layout

    try:
        return fx_split(model.body, layer, layout=layer_layout(model, layer))
    except SplitError as err:
        raise ModelError(f"importance layer {layer!r}: {err}") from err


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module at a dotted path, or a ModelError listing the valid importance layers."""
    modules = dict(model.named_modules())
    layer = canonical_layer(model, layer)
    if layer not in modules:
        if isinstance(model, NiwtNet):
            raise _unknown(model, layer)
        raise ModelError(f"unknown importance layer {layer!r}; valid layers: {', '.join(sorted(modules))}")
    return modules[layer]

"""Any torchvision classifier: trunk/head split at a named layer, importances through the split,
the plain torchvision export, and the degenerate importance layer.

Random weights, tiny inputs: the head applied to the trunk's output must give the full network's
logits, and the importance computed through the split must equal the importance from hooks on
the full network.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from niwt.importance.capture import importance, pool
from niwt.importance.degenerate import DegenerateLayerError, check_layer, inspect_layer
from niwt.models.checkpoint import load_state_dict_file
from niwt.models.graph import nonlinearity_after
from niwt.models.networks import ModelError, NiwtNet, build_model, plain_state_dict, split_at

pytestmark = pytest.mark.usefixtures("single_thread")
SIZE = 32

# (arch, a good layer, a degenerate layer or None): the architectures the README lists
ARCHS = [
    ("smallcnn", "body.block4", None),
    ("vgg16", "body.relu5_3", None),
    ("resnet101", "body.layer4.0", "body.layer4"),
    ("resnet18", "body.layer4.0", "body.layer4"),
    ("resnet50", "body.layer4.1", "body.layer4.2"),
    ("mobilenet_v3_large", "body.features.15", None),
    ("efficientnet_b0", "body.features.7", "body.features.8"),
    ("convnext_tiny", "body.features.5", None),  # features.6 on: near-degenerate (test_default_layer.py)
    ("swin_t", "body.features.5", "body.avgpool"),
    ("swin_v2_t", "body.features.5.1", "body.avgpool"),
    ("vit_b_16", "body.encoder.layers.encoder_layer_10", None),  # the last block: test_transformers.py
]


def _build(arch: str, monkeypatch: pytest.MonkeyPatch) -> NiwtNet:
    # VGG16's N(0, 0.01) fc6 init (100M weights) dominates its build time; a uniform draw is as good here
    def uniform(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> torch.Tensor:
        with torch.no_grad():
            return t.uniform_(mean - std, mean + std)

    monkeypatch.setattr(nn.init, "normal_", uniform)
    torch.manual_seed(0)
    model = build_model(arch, 5, width=4, hidden=8, image_size=SIZE)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode BN is not the identity
        if not model.classifier.weight.any():  # torchvision's ViT starts its classifier at zero
            model.classifier.weight.uniform_(-0.1, 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(("arch", "layer", "degenerate"), ARCHS, ids=[a[0] for a in ARCHS])
def test_split_is_exact_and_importance_matches_hooks(arch: str, layer: str, degenerate: str | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build(arch, monkeypatch)
    x = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.tensor([1, 3])
    with torch.no_grad():
        full = model(x)
    for name in [layer] + ([degenerate] if degenerate else []):
        trunk, head = split_at(model, name)
        shared = {id(p) for p in model.parameters()}
        assert {id(p) for p in trunk.parameters()} | {id(p) for p in head.parameters()} <= shared  # nothing copied
        with torch.no_grad():
            torch.testing.assert_close(model.classifier(head(trunk(x))), full, rtol=0, atol=1e-6)
        acts = trunk(x).detach().requires_grad_(True)
        logits = model.classifier(head(acts))
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
        torch.testing.assert_close(pool(grad, "sum"), importance(model, name, x, targets), rtol=1e-5, atol=1e-6)
    if arch != "smallcnn":  # the plain torchvision network: same logits
        tv = torchvision.models.get_model(arch, num_classes=5, **({"image_size": SIZE} if "vit" in arch else {}))
        tv.load_state_dict(plain_state_dict(model, arch))
        with torch.no_grad():
            torch.testing.assert_close(tv.eval()(x), full, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("arch", "layer", "degenerate"), ARCHS, ids=[a[0] for a in ARCHS])
def test_degenerate_layer_refused_with_explanation(arch: str, layer: str, degenerate: str | None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build(arch, monkeypatch)
    verdict = check_layer(model, layer, SIZE)  # a nonlinearity above it: accepted
    assert verdict.nonlinearity is not None and not verdict.degenerate
    if degenerate is None:
        return
    with pytest.raises(DegenerateLayerError) as err:
        check_layer(model, degenerate, SIZE)
    msg = str(err.value)
    assert f"importance layer {degenerate!r} is degenerate" in msg
    assert "only pooling and linear layers stand between it and the logits" in msg
    assert "equals its class's classifier row" in msg and "extract.allow_degenerate: true" in msg
    forced = check_layer(model, degenerate, SIZE, allow=True)
    assert forced.degenerate and forced.equals_weight_row


def test_resnet101_last_stage_layers_are_all_degenerate(monkeypatch: pytest.MonkeyPatch) -> None:
    """body.layer4, body.layer4.2 and body.avgpool of resnet101 are degenerate (each importance equals its
    class's weight row); body.layer4.1 is not."""
    model = _build("resnet101", monkeypatch)
    for layer in ("body.layer4", "body.layer4.2", "body.avgpool"):
        assert inspect_layer(model, layer, SIZE).degenerate, layer
    assert not inspect_layer(model, "body.layer4.1", SIZE).degenerate


def test_value_check_catches_a_nonlinearity_that_never_switches() -> None:
    """ReLU on positive activations is the identity: the structure shows a ReLU, the values show
    every importance equal to its class's weight row."""
    torch.manual_seed(0)
    body = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 6, 3, padding=1), sig=nn.Sigmoid(), relu=nn.ReLU(),
                                     pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    model = NiwtNet(body, nn.Linear(6, 4)).eval()
    verdict = inspect_layer(model, "body.sig", 8)
    assert verdict.nonlinearity is not None and verdict.equals_weight_row and verdict.degenerate
    with pytest.raises(DegenerateLayerError, match="every image's importance equals its class's classifier row"):
        check_layer(model, "body.sig", 8)


def test_nonlinearity_after_sequential_heads() -> None:
    assert nonlinearity_after(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(4, 3))) \
        is None
    assert "ReLU" in nonlinearity_after(nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3), nn.ReLU()))
    assert "MaxPool2d" in nonlinearity_after(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()))


def test_generic_layer_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build("resnet18", monkeypatch)
    trunk, _ = split_at(model, "layer4.0")  # the torchvision name without body. is accepted
    assert trunk(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 512, 1, 1)
    with pytest.raises(ModelError, match=r"unknown importance layer 'body.layer9'; valid layers: body.conv1"):
        split_at(model, "body.layer9")
    with pytest.raises(ModelError, match="runs more than once"):
        split_at(model, "body.layer4.0.relu")  # ResNet's ReLU module is called twice per block
    with pytest.raises(ModelError, match="skip connection around it"):
        split_at(model, "body.layer4.0.conv1")


def test_user_state_dict_formats(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    tv = torchvision.models.resnet18(num_classes=3).eval()
    sd = tv.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, SIZE, SIZE)
    for name in ("plain.pth", "wrapped.pt", "w.safetensors"):
        model = build_model("resnet18", 3, state_dict=load_state_dict_file(tmp_path / name)).eval()
        with torch.no_grad():
            assert torch.equal(model(x), tv(x)), name
    with pytest.raises(ModelError, match=r"plain.pth: not a state_dict of resnet50 with 3 classes"):
        build_model("resnet50", 3, state_dict=load_state_dict_file(tmp_path / "plain.pth"), source="plain.pth")
    with pytest.raises(ModelError, match=r"not a state_dict of resnet18 with 4 classes: .*size mismatch for fc"):
        build_model("resnet18", 4, state_dict=sd)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="list.pt: not a state_dict"):
        load_state_dict_file(tmp_path / "list.pt")


def test_imagenet_weights_offline_error_for_any_arch(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(ModelError) as err:
        build_model("resnet18", 5, weights="imagenet")
    msg = str(err.value)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert url in msg and f"{tmp_path}/th/hub/checkpoints/{url.rsplit('/', 1)[-1]}" in msg
    assert "model.weights: none" in msg


def test_gated_jacobian_for_a_traced_vgg_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generic (fx-split) VGG-11 head at its last ReLU is pool -> flatten -> MLP: the gated Jacobian
    applies and equals the dense one; a ResNet head (convolutions) falls back to the dense form."""
    from niwt.injection.jacobian import GatedJacobian, channel_jacobian, head_jacobian

    model = _build("vgg11", monkeypatch)
    _, head = split_at(model, "body.features.19")
    trunk, _ = split_at(model, "body.features.19")
    acts = trunk(torch.randn(3, 3, SIZE, SIZE)).detach()
    gated = head_jacobian(head, acts, "sum")
    assert isinstance(gated, GatedJacobian)
    dense = channel_jacobian(head, acts, "sum")
    w = torch.randn(3, 4096)
    img = torch.arange(3)
    torch.testing.assert_close(gated.apply(img, w), torch.bmm(dense, w[:, :, None]).squeeze(2), rtol=1e-4, atol=1e-5)
    model = _build("resnet18", monkeypatch)
    trunk, head = split_at(model, "body.layer4.0")
    assert head_jacobian(head, trunk(torch.randn(2, 3, SIZE, SIZE)).detach(), "sum").kind == "dense"

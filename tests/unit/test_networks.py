"""Backbones as body + classifier: layer names, split points, classifier surgery, checkpoints."""

from __future__ import annotations

import time
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from niwt.models.checkpoint import CheckpointMeta, check_classes, load_checkpoint, save_checkpoint
from niwt.models.networks import (
    ModelError,
    build_model,
    importance_layers,
    resnet101,
    small_cnn,
    split_at,
    vgg16,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_LAYERS = [
    f"body.{name}"
    for b in range(1, 5)
    for name in (f"block{b}.conv", f"block{b}.bn", f"block{b}.relu", f"block{b}", f"pool{b}")
]


def _cheap_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """VGG16's N(0, 0.01) init of fc6 (100M weights) dominates its build time; a uniform draw of
    the same scale is 3x cheaper and just as good for checking that a split is exact."""
    def uniform(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> torch.Tensor:
        with torch.no_grad():
            return t.uniform_(mean - std, mean + std)

    monkeypatch.setattr(nn.init, "normal_", uniform)


def _random_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def test_importance_layers_smallcnn() -> None:
    assert importance_layers(small_cnn(3, width=4, hidden=8, image_size=32)) == SMALL_LAYERS


@pytest.mark.parametrize("layer", ["body.block1.conv", "body.block2.relu", "body.block3", "body.pool3",
                                   "body.block4", "body.pool4"])
def test_split_smallcnn_is_exact(layer: str) -> None:
    torch.manual_seed(0)
    model = small_cnn(3, width=4, hidden=8, image_size=32)
    _random_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    trunk, head = split_at(model, layer)
    with torch.no_grad():
        assert torch.equal(head(trunk(x)), model.features(x))
    # modules are shared, not copied
    shared = {id(p) for p in model.parameters()}
    assert {id(p) for p in trunk.parameters()} | {id(p) for p in head.parameters()} <= shared
    n_split = sum(p.numel() for p in trunk.parameters()) + sum(p.numel() for p in head.parameters())
    assert n_split == sum(p.numel() for p in model.body.parameters())


def test_split_at_unknown_layer() -> None:
    model = small_cnn(3, width=4, hidden=8, image_size=32)
    with pytest.raises(ModelError, match="body.block4.relu"):
        split_at(model, "body.fc")  # below flatten: not an importance layer


def test_vgg16_layers_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    _cheap_init(monkeypatch)
    torch.manual_seed(0)
    model = vgg16(4).eval()
    layers = importance_layers(model)
    expected = []
    for b, n in enumerate([2, 2, 3, 3, 3], start=1):
        for i in range(1, n + 1):
            expected += [f"body.conv{b}_{i}", f"body.relu{b}_{i}"]
        expected.append(f"body.pool{b}")
    assert layers == expected + ["body.avgpool"]
    assert model.body.conv5_3.out_channels == 512 and isinstance(model.body.relu5_3, nn.ReLU)
    assert model.classifier.in_features == 4096 and model.classifier.out_features == 4
    x = torch.randn(1, 3, 64, 64)
    trunk, head = split_at(model, "body.relu5_3")
    with torch.no_grad():
        acts = trunk(x)
        assert acts.shape == (1, 512, 4, 4)
        assert torch.equal(head(acts), model.features(x))


def test_resnet101_layers_and_split() -> None:
    torch.manual_seed(0)
    model = resnet101(4).eval()
    layers = importance_layers(model)
    blocks = {1: 3, 2: 4, 3: 23, 4: 3}
    expected = ["body.conv1", "body.bn1", "body.relu", "body.maxpool"]
    for s, n in blocks.items():
        expected += [f"body.layer{s}.{i}" for i in range(n)] + [f"body.layer{s}"]
    assert layers == expected + ["body.avgpool"]
    x = torch.randn(1, 3, 64, 64)
    trunk, head = split_at(model, "body.layer4.0")
    assert len(head) == 4  # layer4.1, layer4.2, avgpool, flatten
    with torch.no_grad():
        acts = trunk(x)
        assert acts.shape == (1, 2048, 2, 2)
        assert torch.equal(head(acts), model.features(x))


META = CheckpointMeta("smallcnn", ("a", "b", "c"), 3, 32, width=4, hidden=8, layer="body.block4")


def test_checkpoint_round_trip_exact(tmp_path) -> None:
    torch.manual_seed(0)
    model = small_cnn(3, width=4, hidden=8, image_size=32)
    _random_bn(model)
    model.eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, META)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    raw = torch.load(path, weights_only=True)  # only tensors and primitives inside
    assert raw["num_classes"] == 3
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta == META  # the typed record round-trips exactly
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_errors(tmp_path) -> None:
    model = small_cnn(3, width=4, hidden=8, image_size=32)
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="2 class names for 3 outputs"):
        save_checkpoint(tmp_path / "bad.pt", model, META.replace(class_names=("a", "b")))
    raw = {**META.to_dict(), "state_dict": model.state_dict(), "num_classes": 3}
    for change, message in (({"schema_version": 0}, "version 0, this niwt reads version 1; rerun"),
                            ({"surprise": 1}, r"unknown checkpoint metadata \['surprise'\]"),
                            ({"class_names": ["a", "b"]}, "2 class names for 3 outputs")):
        torch.save({**raw, **change}, tmp_path / "old.pt")
        with pytest.raises(ModelError, match=message):
            load_checkpoint(tmp_path / "old.pt")


def test_check_classes() -> None:
    meta = META
    check_classes(meta, ["a", "b", "c"], "m.pt")
    check_classes(meta, ["a", "b", "c", "u1", "u2"], "m.pt")  # unseen appended after the seen ones
    with pytest.raises(ModelError, match=r"m\.pt.*first mismatch: checkpoint 'b'"):
        check_classes(meta, ["a", "x", "c"], "m.pt")
    with pytest.raises(ModelError, match="another dataset"):
        check_classes(meta, ["a", "b"], "m.pt")


def test_build_model() -> None:
    model = build_model("smallcnn", 6, width=4, hidden=8, image_size=32)
    assert model.classifier.out_features == 6 and model.body.fc.out_features == 8
    with pytest.raises(ModelError, match="no pretrained"):
        build_model("smallcnn", 6, weights="imagenet")
    with pytest.raises(ModelError, match="unknown model.arch .vgg99."):
        build_model("vgg99", 6)
    with pytest.raises(ModelError, match="divisible by 16"):
        build_model("smallcnn", 6, image_size=40)


def test_pretrained_offline_error_names_hub_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    for name in ("normal_", "kaiming_normal_", "kaiming_uniform_", "uniform_", "constant_"):
        monkeypatch.setattr(nn.init, name, lambda t, *a, **k: t)  # weights are never used here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        build_model("vgg16", 5, weights="imagenet")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert f"{tmp_path}/th/hub/checkpoints/vgg16-397923af.pth" in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert "URLError" in msg and "weights: none" in msg
    assert calls == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    assert isinstance(err.value.__cause__, urllib.error.URLError)

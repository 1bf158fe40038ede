"""``extract.layer: auto``: the importance layer per architecture family, by a stated rule (the paper's
layers for the built-in networks, the first unit of a ResNet's last stage, a VGG's last ReLU, the block
before the last of a ``features`` chain), never degenerate, and cut exactly: head(trunk(x)) is the network."""

from __future__ import annotations

import pytest
import torch

from niwt.importance.degenerate import check_layer
from niwt.models.networks import ModelError, build_model, default_layer, importance_layer, split_at

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

EXPECTED = {
    "smallcnn": "body.block4",
    "vgg16": "body.relu5_3",
    "resnet101": "body.layer4.0",
    "resnet18": "body.layer4.0",
    "resnext50_32x4d": "body.layer4.0",
    "vgg11": "body.features.19",  # conv5_2 after ReLU, the last before pool5
    "mobilenet_v3_small": "body.features.11",  # features.12 is the last 1x1 conv block
    "efficientnet_b0": "body.features.7",
    "convnext_tiny": "body.features.5",  # stage 3's output: stage 4's residual blocks make anything above
    # them near-degenerate (importance ~ the weight row, mean cosine 0.999)
    "swin_t": "body.features.5",  # the same rule and the same reason as ConvNeXt
    "vit_b_16": "body.encoder.layers.encoder_layer_10",  # the block before the last (whose patch tokens feed
    # nothing: the head reads the class token alone)
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_auto_picks_the_family_layer_and_it_is_usable(arch):
    torch.manual_seed(0)
    model = build_model(arch, 7, image_size=64).eval()
    with torch.no_grad():  # torchvision starts a ViT's classifier at zero: every logit would be its bias
        model.classifier.weight.normal_(0, 0.05)
    layer = importance_layer(model, arch, "auto")
    assert layer == EXPECTED[arch] == default_layer(model, arch)
    assert importance_layer(model, arch, "body.other") == "body.other"  # a name is taken as given
    check_layer(model, layer, 64)  # a nonlinearity above it, importances differ between images
    trunk, head = split_at(model, layer)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(head(trunk(x))), model(x))


def test_the_network_over_features_takes_its_first_hidden_layer():
    model = build_model("mlp", 5, hidden=8, in_features=6)
    assert importance_layer(model, "mlp", "auto") == "body.relu1"


def test_a_family_without_a_rule_asks_for_the_layer():
    model = build_model("regnet_x_400mf", 3, image_size=64)
    with pytest.raises(ModelError, match="extract.layer: auto has no rule for 'regnet_x_400mf'.*niwt layers"):
        importance_layer(model, "regnet_x_400mf", "auto")


def test_near_degenerate_layers_are_refused_by_value_with_the_figure(capsys):
    """ConvNeXt's last stage passes a normalised copy of the class's weight row down (residual blocks,
    LayerNorm): a nonlinearity is there, but the importance is the row (mean cosine 0.999)."""
    from niwt.commands.layers import layer_table
    from niwt.importance.degenerate import DegenerateLayerError, inspect_layer

    torch.manual_seed(0)
    model = build_model("convnext_tiny", 7, image_size=64).eval()
    verdict = inspect_layer(model, "body.features.7", 64)
    assert verdict.nonlinearity is not None and verdict.weight_row_cosine > 0.99 and verdict.degenerate
    near = r"nearly its class's classifier row \(mean cosine 0\.99\d\d >= 0\.99\)"
    with pytest.raises(DegenerateLayerError, match=near):
        check_layer(model, "body.features.7", 64)
    assert check_layer(model, "body.features.7", 64, allow=True).near_degenerate
    rows = {r["layer"]: r for r in layer_table(model, 64, arch="convnext_tiny")}
    assert rows["body.features.7"]["status"].startswith("degenerate (importance ~ weight row, cos 0.99")
    assert rows["body.features.5"]["status"] == "ok (default)"
    resnet = build_model("resnet18", 7, image_size=64).eval()
    assert inspect_layer(resnet, "body.layer4.0", 64).weight_row_cosine < 0.95  # a real nonlinearity above

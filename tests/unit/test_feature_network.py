"""``model.arch: mlp``, the network over precomputed features: its importance layer is image-dependent (the
second hidden layer's ReLU above it), the layer above that is degenerate, the head's Jacobian stays exact
on a vector layer, checkpoints rebuild it, and image-only paths refuse it with one clear message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from niwt.explain.gradcam import gradcam
from niwt.importance.capture import LayerCapture, batch_importance
from niwt.importance.degenerate import DegenerateLayerError, check_layer
from niwt.injection.jacobian import DenseJacobian, channel_jacobian, gated_jacobian, head_jacobian
from niwt.injection.niwt import observed_importance
from niwt.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from niwt.models.finetuning import initial_model
from niwt.models.networks import ModelError, build_model, example_input, mlp, split_at, takes_features
from niwt.params import ModelParams

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def net(seed: int = 0, d: int = 12, hidden: int = 16, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(classes, d, hidden=hidden).double().eval()


def test_the_first_hidden_layer_is_a_valid_importance_layer_and_the_second_is_degenerate():
    model = net().float()
    verdict = check_layer(model, "body.relu1", image_size=0)
    assert verdict.shape == (16,) and verdict.varies and not verdict.degenerate
    with pytest.raises(DegenerateLayerError, match="'body.relu2' is degenerate"):
        check_layer(model, "body.relu2", image_size=0)
    assert example_input(model, 3, 64).shape == (3, 12) and takes_features(model)


def test_importance_is_the_hand_derived_gradient():
    """alpha(x) for class c at relu1 = W2^T diag(relu'(z2)) w_c, with z2 = W2 relu(W1 x + b1) + b2."""
    model = net()
    x = torch.randn(4, 12, dtype=torch.double)
    c = torch.tensor([0, 1, 2, 3])
    with LayerCapture(model, "body.relu1") as cap:
        alpha, _ = batch_importance(model, cap, x, c)
    w1, b1 = model.body.fc1.weight, model.body.fc1.bias
    w2, b2 = model.body.fc2.weight, model.body.fc2.bias
    z2 = torch.relu(x @ w1.T + b1) @ w2.T + b2
    expected = ((z2 > 0).double() * model.classifier.weight[c]) @ w2
    torch.testing.assert_close(alpha.double(), expected.detach(), rtol=0, atol=1e-6)  # returned in float32
    cam = gradcam(model, "body.relu1", x, c)
    assert cam.cam.shape == (4, 0, 0)  # Grad-CAM is not defined on features; the importances are
    torch.testing.assert_close(cam.importance, alpha)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_the_head_jacobian_of_a_vector_layer_is_exact_in_both_forms(pooling):
    model = net(seed=1)
    trunk, head = split_at(model, "body.relu1")
    acts = trunk(torch.randn(9, 12, dtype=torch.double))
    w = torch.randn(9, 16, dtype=torch.double)
    with torch.enable_grad():
        ref = observed_importance(head, acts, w, pooling, create_graph=False)
    gated = gated_jacobian(head, acts, pooling)
    assert gated is not None and head_jacobian(head, acts, pooling).kind == "gated"
    torch.testing.assert_close(gated.apply(torch.arange(9), w), ref, rtol=0, atol=1e-12)
    dense = DenseJacobian(channel_jacobian(head, acts, pooling))
    torch.testing.assert_close(dense.apply(torch.arange(9), w), ref, rtol=0, atol=1e-12)


def test_a_checkpoint_rebuilds_the_network_over_features(tmp_path):
    model = net().float()
    meta = CheckpointMeta("mlp", tuple("abcde"), 5, 64, hidden=16, in_features=12)
    save_checkpoint(tmp_path / "m.pt", model, meta)
    again, read = load_checkpoint(tmp_path / "m.pt")
    assert read.in_features == 12 and again.in_features == 12
    x = torch.randn(3, 12)
    torch.testing.assert_close(again(x), model(x))


def test_features_and_image_networks_do_not_mix():
    with pytest.raises(ModelError, match="model.arch mlp reads precomputed features"):
        build_model("mlp", 5)
    with pytest.raises(ModelError, match="precomputed feature vectors \\(2048-d.*set model.arch: mlp"):
        initial_model(ModelParams(arch="smallcnn"), ["a", "b"], in_features=2048)
    with pytest.raises(ModelError, match="mlp has no pretrained weights"):
        build_model("mlp", 5, weights="imagenet", in_features=8)
    model = initial_model(ModelParams(arch="mlp", hidden=8), ["a", "b"], in_features=6)
    assert model(torch.zeros(2, 6)).shape == (2, 2)


def test_training_and_the_pool_checks_take_feature_vectors(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from niwt.errors import InputError
    from niwt.injection.methods import check_pool
    from niwt.models.training import train_one_epoch
    from niwt.params import InjectParams

    model = net().float().train()
    data = TensorDataset(torch.randn(8, 12), torch.randint(0, 5, (8,)), torch.arange(8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, nn.CrossEntropyLoss(), opt, DataLoader(data, batch_size=4), torch.device("cpu"), 1,
                          channels_last=True, progress=False)  # finetune.channels_last has nothing to do here
    assert out["loss"] > 0
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="folder of images, but the network reads precomputed features"):
        check_pool(["niwt"], InjectParams(pool=str(tmp_path)), features=True)
    check_pool(["niwt"], InjectParams(pool="noise"), features=True)


def test_the_registered_model_takes_feature_rows():
    from niwt.integration.registry import signature

    spec = signature(12).inputs.to_dict()
    assert spec == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 12)}}]
    assert signature().inputs.input_names() == ["image"]

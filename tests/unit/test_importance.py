"""Exact tests of neuron-importance capture (``niwt.importance.capture``).

Hand-weighted net (one 2x2 single-channel image, H = W = 2)::

    conv (1x1, no bias): A_0 = x, A_1 = -x
    relu:                R = relu(A)
    pool (AvgPool2d 2):  P_k = mean_ij R_kij
    fc:                  h = relu2(F P + b),  F = [[1, 2], [-1, 1]],  b = [0, 1]
    classifier:          s = V h,             V = [[2, -1], [0.5, 3]]

For x = [[1, -2], [3, 0.5]]: P = [1.125, 0.5], F P + b = [2.125, 0.375] (both active), so
s = [3.875, 2.1875] (argmax 0). With both hidden units active,
``d s_c / d R_kij = g_ck / 4`` with ``g_c = V_c F``: g_0 = [3, 3], g_1 = [-2.5, 4], and
``d s_c / d A_kij = g_ck / 4 * [A_kij > 0]``. A_0 = x has 3 positive entries, A_1 = -x has 1, so
at ``body.conv`` (sum pooling) alpha = g_c * [3/4, 1/4]:  c=0 -> [2.25, 0.75], c=1 -> [-1.875, 1.0];
at ``body.relu`` (sum pooling) alpha = g_c:  c=0 -> [3, 3], c=1 -> [-2.5, 4].
Mean pooling divides everything by H*W = 4.

For -x: P = [0.5, 1.125], F P + b = [2.75, 1.625] (both active), s = [3.875, 6.25] (argmax 1);
A_0 = -x has 1 positive entry, A_1 = x has 3: at ``body.conv`` c=0 -> [0.75, 2.25],
c=1 -> [-0.625, 3.0].
"""

from __future__ import annotations

import gc
import weakref
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from niwt.importance.capture import (
    LayerCapture,
    batch_importance,
    importance,
    pool,
    prepare_for_extraction,
    to_model_format,
)
from niwt.models.networks import ModelError, NiwtNet, small_cnn

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.tensor([[1.0, -2.0], [3.0, 0.5]]).reshape(1, 1, 2, 2)

CONV_SUM = {0: [2.25, 0.75], 1: [-1.875, 1.0]}  # image X at body.conv
CONV_SUM_NEG = {0: [0.75, 2.25], 1: [-0.625, 3.0]}  # image -X at body.conv
RELU_SUM = {0: [3.0, 3.0], 1: [-2.5, 4.0]}  # image X (or -X) at body.relu


def hand_net(inplace: bool) -> NiwtNet:
    conv = nn.Conv2d(1, 2, 1, bias=False)
    fc = nn.Linear(2, 2)
    cls = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        fc.bias.copy_(torch.tensor([0.0, 1.0]))
        cls.weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 3.0]]))
    body = nn.Sequential(OrderedDict(
        conv=conv, relu=nn.ReLU(inplace=inplace), pool=nn.AvgPool2d(2), flatten=nn.Flatten(),
        fc=fc, relu2=nn.ReLU(inplace=inplace),
    ))
    return NiwtNet(body, cls)


def tiny_cnn(seed: int = 0) -> NiwtNet:
    """small_cnn with random BatchNorm statistics, so train- and eval-mode BN differ clearly."""
    torch.manual_seed(seed)
    model = small_cnn(5, width=4, hidden=16, image_size=32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_hand_net_logits() -> None:
    logits = hand_net(False)(torch.cat([X, -X]))
    torch.testing.assert_close(logits, torch.tensor([[3.875, 2.1875], [3.875, 6.25]]))


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("pooling,scale", [("sum", 1.0), ("mean", 0.25)])
@pytest.mark.parametrize("target", [0, 1])
def test_hand_net_exact_importance(inplace: bool, pooling: str, scale: float, target: int) -> None:
    model = hand_net(inplace)
    images = torch.cat([X, -X])
    t = torch.tensor([target, target])
    # body.conv: its output is then modified in place by the ReLU when inplace=True
    got = importance(model, "body.conv", images, t, pooling)
    want = torch.tensor([CONV_SUM[target], CONV_SUM_NEG[target]]) * scale
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    got = importance(model, "body.relu", images, t, pooling)
    want = torch.tensor([RELU_SUM[target], RELU_SUM[target]]) * scale
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got.dtype == torch.float32 and got.shape == (2, 2)


def test_inplace_relu_does_not_touch_stored_activation() -> None:
    model = hand_net(True).eval()
    with LayerCapture(model, "body.conv") as cap:
        imp, logits = batch_importance(model, cap, X, torch.tensor([0]))
        # the conv output keeps its negative entries although the next ReLU is in place
        torch.testing.assert_close(cap.activation.detach(), torch.cat([X, -X], 1))
    torch.testing.assert_close(imp, torch.tensor([CONV_SUM[0]]))
    torch.testing.assert_close(logits, torch.tensor([[3.875, 2.1875]]))
    assert not logits.requires_grad


def test_predicted_target_uses_argmax() -> None:
    model = hand_net(True)
    got = importance(model, "body.conv", torch.cat([X, -X]), None)  # argmax: [0, 1]
    torch.testing.assert_close(got, torch.tensor([CONV_SUM[0], CONV_SUM_NEG[1]]), rtol=0, atol=1e-6)


def test_pool_reductions() -> None:
    g = torch.arange(24.0).reshape(2, 3, 2, 2)
    torch.testing.assert_close(pool(g, "sum"), torch.tensor([[6.0, 22, 38], [54, 70, 86]]))
    torch.testing.assert_close(pool(g, "mean"), torch.tensor([[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]]))
    flat = torch.randn(4, 5)
    assert torch.equal(pool(flat, "sum"), flat)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_batched_equals_per_image_loop_with_batchnorm(pooling: str) -> None:
    model = tiny_cnn()
    model.train()  # importance() must switch to eval itself (train-mode BN mixes the batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    images = torch.randn(8, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    batched = importance(model, "body.block4", images, targets, pooling)
    assert model.training  # mode restored
    singles = torch.cat([importance(model, "body.block4", images[i:i + 1], targets[i:i + 1], pooling)
                         for i in range(8)])
    assert batched.shape == (8, 16)
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)
    # BN running statistics untouched (eval mode during capture)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # sanity: in train mode the batch statistics would change a sample's importance
    with LayerCapture(model, "body.block4") as cap:
        model.train()
        train_mode, _ = batch_importance(model, cap, images, targets, pooling)
    model.load_state_dict(before)
    assert not torch.allclose(train_mode, batched, atol=1e-3)


@pytest.mark.parametrize("channels_last", [False, True])
def test_prepared_model_gives_the_same_importances(channels_last: bool) -> None:
    """What the extract stage runs (frozen parameters, optionally channels-last) matches the
    plain model, batched and per image, and autograd records no graph below the layer."""
    model = tiny_cnn()
    torch.manual_seed(2)
    images = torch.randn(6, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = importance(model, "body.block4", images, targets)
    prepared = prepare_for_extraction(tiny_cnn(), channels_last)
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    x = to_model_format(images, channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    trunk_records = []
    prepared.body.block3.register_forward_hook(lambda m, i, out: trunk_records.append(out.requires_grad))
    with LayerCapture(prepared, "body.block4") as cap:
        got, logits = batch_importance(prepared, cap, x, targets)
        assert trunk_records == [False]  # no autograd graph below the layer (True on an unprepared model)
        singles = torch.cat([batch_importance(prepared, cap, x[i:i + 1], targets[i:i + 1])[0] for i in range(6)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(singles, expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == (6, 5)


def test_hook_removed_after_exit_and_on_exception() -> None:
    model = hand_net(True)
    module = model.body.conv
    with LayerCapture(model, "body.conv") as cap:
        assert len(module._forward_hooks) == 1
        model(X)
        assert cap.activation is not None
    assert len(module._forward_hooks) == 0
    assert cap.activation is None
    with pytest.raises(RuntimeError, match="boom"), LayerCapture(model, "body.conv"):
        model(X)
        raise RuntimeError("boom")
    assert len(module._forward_hooks) == 0
    # without the hook, forward is the plain network again
    torch.testing.assert_close(model(X), torch.tensor([[3.875, 2.1875]]))


def test_hundred_iterations_do_not_accumulate_hooks_or_keep_activations() -> None:
    model = tiny_cnn()
    module = model.body.block4
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 1])
    refs = []
    for _ in range(100):
        with LayerCapture(model.eval(), "body.block4") as cap:
            out, _ = batch_importance(model, cap, images, targets)
            refs.append(weakref.ref(cap.activation))
            assert len(module._forward_hooks) == 1
        assert len(module._forward_hooks) == 0
        importance(model, "body.block4", images, targets)
        assert len(module._forward_hooks) == 0
    del out
    gc.collect()
    # every captured activation (and the graph hanging off it) was freed: nothing accumulates
    assert all(r() is None for r in refs)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_parameter_grads_untouched_and_frozen_params_work() -> None:
    model = tiny_cnn()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([4, 2, 0])
    ref = importance(model, "body.block4", images, targets)
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = importance(model, "body.block4", images, targets)
    assert torch.equal(frozen, ref)
    assert frozen.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_unknown_layer_lists_valid_layers() -> None:
    model = tiny_cnn()
    with pytest.raises(ModelError, match="body.block5") as err:
        importance(model, "body.block5", torch.randn(1, 3, 32, 32), torch.tensor([0]))
    msg = str(err.value)
    for name in ("body.block1.conv", "body.block4", "body.pool4"):
        assert name in msg
    with pytest.raises(ModelError, match="valid layers"):
        LayerCapture(model, "classifier.weight")


def test_degenerate_architecture_importance_is_class_weight_row() -> None:
    """Layer -> global average pooling -> one linear layer: alpha_k = W_ck (sum) or W_ck/HW (mean)
    for every image, so importances carry no information beyond the weight row."""
    torch.manual_seed(0)
    body = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 6, 3, padding=1), relu=nn.ReLU(inplace=True),
                                     gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    model = NiwtNet(body, nn.Linear(6, 4))
    images = torch.randn(5, 3, 8, 8)
    targets = torch.tensor([2, 2, 2, 0, 3])
    w = model.classifier.weight.detach()
    got = importance(model, "body.relu", images, targets, "mean")
    torch.testing.assert_close(got, w[targets] / 64, rtol=1e-6, atol=1e-7)
    got = importance(model, "body.relu", images, targets, "sum")
    torch.testing.assert_close(got, w[targets], rtol=1e-5, atol=1e-6)


def test_default_smallcnn_layer_avoids_degeneracy() -> None:
    model = tiny_cnn()
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    got = importance(model, "body.block4", images, torch.tensor([1, 1]), "mean")
    cos = F.cosine_similarity(got[0], got[1], dim=0).item()
    assert cos < 0.99, cos
    assert not torch.allclose(got[0], got[1], rtol=1e-3)

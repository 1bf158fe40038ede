"""Exact tests of the precomputed pooled head Jacobians (``niwt.injection.jacobian``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from niwt.injection import jacobian as jacobian_module
from niwt.injection.jacobian import (
    DenseJacobian,
    GatedJacobian,
    JacobianError,
    JacobianTooLarge,
    channel_jacobian,
    gated_jacobian,
    head_jacobian,
)
from niwt.injection.niwt import inject, observed_importance, resolve_solver
from niwt.models.networks import small_cnn, split_at, vgg16
from niwt.params import InjectParams

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
]


def frozen(head: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in head.modules():
        if isinstance(m, nn.BatchNorm1d):  # non-trivial running statistics and affine terms
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


def reference(head: nn.Module, acts: torch.Tensor, w: torch.Tensor, pooling: str) -> torch.Tensor:
    with torch.enable_grad():
        return observed_importance(head, acts, w, pooling, create_graph=False)


C, S = 5, 6  # channels and spatial side at the layer

GATED_HEADS = {
    # smallcnn at body.block4: max-pool, flatten, fc, ReLU (in place), dropout
    "maxpool_mlp": lambda: nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(C * 9, 7),
                                         nn.ReLU(inplace=True), nn.Dropout(0.5)),
    # VGG16 at relu5_3: pool5, adaptive average pool, fc6-relu-drop, fc7-relu-drop (nested)
    "vgg_like": lambda: nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                      nn.Sequential(nn.Linear(C * 4, 8), nn.ReLU(), nn.Dropout()),
                                      nn.Linear(8, 7), nn.ReLU(inplace=True), nn.Dropout()),
    # overlapping windows, a padded average pool last, batch norm, a final linear without ReLU
    "padded_avg_bn": lambda: nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2, padding=1),
                                           nn.Flatten(), nn.Linear(C * 4, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                           nn.Linear(8, 7)),
    "flatten_only": lambda: nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, 7), nn.ReLU()),
}


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("name", sorted(GATED_HEADS))
def test_gated_jacobian_equals_double_backprop(name: str, pooling: str) -> None:
    head = frozen(GATED_HEADS[name]())
    torch.manual_seed(1)
    acts = torch.randn(9, C, S, S)
    jac = head_jacobian(head, acts, pooling)
    assert isinstance(jac, GatedJacobian)
    w = torch.randn(9, 7)
    torch.testing.assert_close(jac.apply(torch.arange(9), w), reference(head, acts, w, pooling),
                               rtol=1e-5, atol=1e-5)
    # any pairing of images and rows, images repeated and out of order
    img = torch.tensor([3, 3, 0, 8])
    torch.testing.assert_close(jac.apply(img, w[:4]), reference(head, acts[img], w[:4], pooling),
                               rtol=1e-5, atol=1e-5)
    # and the dense jvp form agrees with it
    dense = DenseJacobian(channel_jacobian(head, acts, pooling))
    torch.testing.assert_close(dense.apply(img, w[:4]), jac.apply(img, w[:4]), rtol=1e-5, atol=1e-5)


def test_gated_jacobian_hand_value() -> None:
    """Head = 2x2 max-pool on a 2x2 map, flatten, linear (2 channels -> 2), ReLU: with sum
    pooling M(x)[k, d] = gate_d(x) * W[d, k], whatever the max positions are."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
        lin.bias.zero_()
    head = frozen(nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), lin, nn.ReLU()))
    acts = torch.tensor([[[[0.0, 5.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # pooled (5, 1): pre = (7, 11)
    acts = torch.cat([acts, -acts])  # second image: pooled (0, 0) -> pre = (0, 0): both gates shut
    jac = gated_jacobian(head, acts, "sum")
    assert jac is not None and jac.gates[0].tolist() == [[True, True], [False, False]]
    w = torch.tensor([[1.0, 10.0], [1.0, 10.0]])
    assert jac.apply(torch.arange(2), w).tolist() == [[31.0, -38.0], [0.0, 0.0]]
    assert jac.apply(torch.arange(2), w).tolist() == reference(head, acts, w, "sum").tolist()


@pytest.mark.parametrize("head", [
    nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)),
    nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(C * 9, 7), nn.Tanh()),
    # a max pool after a padded average pool: its sum of derivatives depends on the argmax
    nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(C * 9, 7)),
], ids=["conv", "tanh", "max_after_padded_avg"])
def test_other_heads_use_the_dense_form_and_stay_exact(head: nn.Module) -> None:
    head = frozen(head)
    torch.manual_seed(2)
    acts = torch.randn(4, C, S, S)
    assert gated_jacobian(head, acts, "sum") is None
    jac = head_jacobian(head, acts, "sum")
    assert isinstance(jac, DenseJacobian) and jac.m.shape == (4, C, 7)
    w = torch.randn(4, 7)
    torch.testing.assert_close(jac.apply(torch.arange(4), w), reference(head, acts, w, "sum"), rtol=1e-5, atol=1e-5)


def test_dense_form_too_large_and_training_head_are_clear_errors() -> None:
    head = frozen(nn.Sequential(nn.Conv2d(C, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 7)))
    acts = torch.randn(3, C, S, S)
    with pytest.raises(JacobianTooLarge, match=r"inject\.solver: double_backprop"):
        head_jacobian(head, acts, "sum", dense_limit_bytes=100)
    train_head = GATED_HEADS["maxpool_mlp"]().train()
    with pytest.raises(JacobianError, match="eval mode"):
        head_jacobian(train_head, acts, "sum")


def test_real_backbones_get_the_gated_form() -> None:
    """smallcnn at body.block4 and VGG16 at body.relu5_3 (the paper's layer) are gated heads."""
    model = small_cnn(4, width=4, hidden=16, image_size=32).eval()
    trunk, head = split_at(model, "body.block4")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        acts = trunk(x)
    jac = head_jacobian(head, acts, "sum")
    assert isinstance(jac, GatedJacobian) and jac.gates[0].shape == (3, 16)
    w = torch.randn(3, 16)
    torch.testing.assert_close(jac.apply(torch.arange(3), w), reference(head, acts, w, "sum"), rtol=1e-5, atol=1e-5)
    _, vgg_head = split_at(vgg16(4).eval(), "body.relu5_3")
    plan_acts = torch.randn(1, 512, 14, 14)
    vgg_jac = gated_jacobian(vgg_head, plan_acts, "sum")
    assert vgg_jac is not None and [g.shape[1] for g in vgg_jac.gates] == [4096, 4096]


def test_inject_with_gated_jacobian_matches_double_backprop() -> None:
    model = small_cnn(5, width=4, hidden=16, image_size=32).eval()
    trunk, head = split_at(model, "body.block4")
    torch.manual_seed(4)
    with torch.no_grad():
        acts = trunk(torch.randn(12, 3, 32, 32))
    alpha_hat, w_seen = torch.randn(3, 16), model.classifier.weight.detach()
    cfg, opt = InjectParams(batch_size=8, max_iters=60, patience=1000), {"lr": 0.01, "lambda_": 1e-3}
    jac = inject(head, acts, alpha_hat, w_seen, cfg, solver="jacobian", pooling="sum", seed=2, **opt)
    dbp = inject(head, acts, alpha_hat, w_seen, cfg, solver="double_backprop", pooling="sum", seed=2, **opt)
    assert jac.history[-1] < jac.history[0]
    assert max(abs(a - b) for a, b in zip(jac.history, dbp.history, strict=True)) < 1e-5
    torch.testing.assert_close(jac.weight, dbp.weight, rtol=1e-5, atol=1e-5)


def test_auto_solver_falls_back_to_double_backprop_when_the_dense_form_is_too_large(monkeypatch) -> None:
    conv = frozen(nn.Sequential(nn.Conv2d(C, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 7)))
    mlp = frozen(GATED_HEADS["maxpool_mlp"]())
    torch.manual_seed(5)
    acts = torch.randn(6, C, S, S)
    assert resolve_solver(mlp, acts, "sum", "auto")[0] == "jacobian"
    assert resolve_solver(conv, acts, "sum", "auto")[0] == "jacobian"  # dense fits
    assert resolve_solver(conv, acts, "sum", "double_backprop") == ("double_backprop", None)
    monkeypatch.setattr(jacobian_module, "DENSE_LIMIT_BYTES", 100)
    assert resolve_solver(conv, acts, "sum", "auto") == ("double_backprop", None)
    assert resolve_solver(mlp, acts, "sum", "auto")[0] == "jacobian"  # the gated form needs no dense memory
    with pytest.raises(JacobianTooLarge):
        resolve_solver(conv, acts, "sum", "jacobian")
    with pytest.raises(ValueError, match="unknown solver"):
        resolve_solver(conv, acts, "sum", "newton")
    cfg, opt = InjectParams(batch_size=4, max_iters=5, patience=1000), {"lr": 0.01, "lambda_": 1e-3}
    alpha_hat, w_seen = torch.randn(2, C), torch.randn(3, 7)
    auto = inject(conv, acts, alpha_hat, w_seen, cfg, pooling="sum", seed=0, **opt)  # the default solver is auto
    reference = inject(conv, acts, alpha_hat, w_seen, cfg, solver="double_backprop", pooling="sum", seed=0, **opt)
    assert auto.solver == reference.solver == "double_backprop"
    assert torch.equal(auto.weight, reference.weight)
    assert inject(mlp, acts, alpha_hat, w_seen, cfg, pooling="sum", seed=0, **opt).solver == "jacobian (gated)"


def test_dense_limit_follows_free_memory(monkeypatch) -> None:
    """``auto`` accepts a dense Jacobian up to half the device's free memory (no fixed 4 GiB)."""
    monkeypatch.setattr(jacobian_module, "DENSE_LIMIT_BYTES", None)
    monkeypatch.setattr(jacobian_module, "free_memory_bytes", lambda device: 1000)
    assert jacobian_module.dense_limit(torch.device("cpu")) == 500
    assert jacobian_module.free_memory_bytes.__name__  # patched; the real one reads /proc/meminfo
    monkeypatch.undo()
    assert 0 < jacobian_module.free_memory_bytes(torch.device("cpu"))


def test_bfloat16_dense_jacobian_returns_the_rows_dtype() -> None:
    m = torch.randn(3, 4, 5)
    dense, half = DenseJacobian(m), DenseJacobian(m.to(torch.bfloat16))
    img, rows = torch.tensor([0, 2]), torch.randn(2, 5)
    out = half.apply(img, rows)
    assert out.dtype == torch.float32 and half.nbytes * 2 == dense.nbytes
    torch.testing.assert_close(out, dense.apply(img, rows), rtol=2e-2, atol=2e-2)

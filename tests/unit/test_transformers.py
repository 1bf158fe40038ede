"""Transformers as NIWT backbones: a ViT's importance is the class logit's gradient summed over the patch
tokens, a Swin's over its channels-last map; both computed here by hand on the plain torchvision model
(a hook on the block's raw output) and compared with niwt's packed capture, its trunk/head split, its
dense head Jacobian and Grad-CAM on the patch grid. Random weights, 32-pixel inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from niwt.explain.gradcam import gradcam
from niwt.importance.capture import importance
from niwt.importance.degenerate import DegenerateLayerError, check_layer
from niwt.injection.jacobian import DenseJacobian, channel_jacobian
from niwt.injection.niwt import observed_importance
from niwt.models.layout import layer_layout
from niwt.models.networks import build_model, default_layer, split_at

pytestmark = pytest.mark.usefixtures("single_thread")
SIZE = 32
VIT_BLOCK = "encoder.layers.encoder_layer_10"


def _plain(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"image_size": SIZE} if arch.startswith("vit") else {}
    tv = torchvision.models.get_model(arch, num_classes=5, **kw).eval()
    head = tv.heads.head if arch.startswith("vit") else tv.head
    with torch.no_grad():
        head.weight.normal_(0, 0.05)  # torchvision starts a ViT's classifier at zero
    return tv


def _niwt(arch: str, tv: torch.nn.Module) -> torch.nn.Module:
    model = build_model(arch, 5, image_size=SIZE, state_dict=tv.state_dict())
    return model.eval()


def _hooked_gradient(tv: torch.nn.Module, module: str, x: torch.Tensor, targets: torch.Tensor):
    """The raw output of ``module`` and the gradient of each image's target logit w.r.t. it."""
    store = {}

    def keep(m, i, o):
        o.retain_grad()
        store["out"] = o

    handle = tv.get_submodule(module).register_forward_hook(keep)
    try:
        logits = tv(x)
        logits.gather(1, targets[:, None]).sum().backward()
    finally:
        handle.remove()
    return store["out"].detach(), store["out"].grad


@pytest.mark.parametrize(("arch", "block"), [("vit_b_16", VIT_BLOCK), ("swin_t", "features.5")])  # swin_v2_t:
# the split and the hook importance in test_any_architecture.py
def test_importance_is_the_gradient_summed_over_patches(arch: str, block: str) -> None:
    tv = _plain(arch)
    x, targets = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 2, 4])
    out, grad = _hooked_gradient(tv, block, x, targets)
    # ViT: (B, 1 + patches, C), the class token first: the patch tokens' sum; Swin: (B, H, W, C)
    expected = grad[:, 1:].sum(1) if arch.startswith("vit") else grad.sum((1, 2))
    model = _niwt(arch, tv)
    got = importance(model, f"body.{block}", x, targets)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(importance(model, block, x, targets, "mean"),
                               expected / (out.shape[1] if arch.startswith("vit") else out[0, ..., 0].numel()),
                               rtol=1e-4, atol=1e-7)

    trunk, head = split_at(model, f"body.{block}")  # the split: the whole network, and the same importances
    acts = trunk(x).detach()
    assert acts.shape[1] == out.shape[-1]  # packed channels first
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(head(acts)), tv(x), rtol=0, atol=1e-5)
    rows = model.classifier.weight[targets].detach()
    by_backprop = observed_importance(head, acts, rows, "sum", False)
    torch.testing.assert_close(by_backprop, expected, rtol=1e-4, atol=1e-6)
    n = 3 if arch.startswith("vit") else 1  # Swin's window shifts fall back to a slow per-sample vmap
    dense = DenseJacobian(channel_jacobian(head, acts[:n], "sum"))  # forward-mode AD: the class token's tangent
    torch.testing.assert_close(dense.apply(torch.arange(n), rows[:n]), expected[:n], rtol=1e-4, atol=1e-6)


def test_vit_gradcam_lies_on_the_patch_grid() -> None:
    tv = _plain("vit_b_16")
    x, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 3])
    out, grad = _hooked_gradient(tv, VIT_BLOCK, x, targets)
    side = SIZE // 16
    acts = out[:, 1:].transpose(1, 2).unflatten(2, (side, side))  # (B, C, h, w): patches in row-major order
    weights = grad[:, 1:].mean(1)
    expected = torch.relu((weights[:, :, None, None] * acts).sum(1))
    cam = gradcam(_niwt("vit_b_16", tv), f"body.{VIT_BLOCK}", x, targets)
    assert cam.raw.shape == (2, side, side) and cam.cam.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(cam.raw, expected, rtol=1e-4, atol=1e-6)


def test_vit_last_block_is_refused_and_layouts_are_named() -> None:
    """The head reads the class token alone: the last block's patch tokens get no gradient."""
    model = _niwt("vit_b_16", _plain("vit_b_16"))
    with pytest.raises(DegenerateLayerError, match="no gradient of the logits reaches it"):
        check_layer(model, "body.encoder.layers.encoder_layer_11", SIZE)
    verdict = check_layer(model, default_layer(model, "vit_b_16"), SIZE)
    assert verdict.shape == (768, 5) and verdict.layout.kind == "tokens" and not verdict.degenerate
    assert layer_layout(model, "body.conv_proj").kind == "map"
    swin = build_model("swin_t", 5, image_size=SIZE)
    assert layer_layout(swin, "body.features.5").kind == "hwc"
    assert layer_layout(swin, "body.features.0.0").kind == "map"  # the patch embedding's convolution


def test_layers_lists_transformer_blocks_with_token_shapes() -> None:
    from niwt.commands.layers import layer_table

    model = _niwt("vit_b_16", _plain("vit_b_16"))
    rows = {r["layer"]: r for r in layer_table(model, SIZE, arch="vit_b_16")}
    assert rows["body.encoder.layers.encoder_layer_0"]["shape"] == (5, 768)  # class token + 2x2 patches
    assert rows["body.encoder.layers.encoder_layer_10"]["status"] == "ok (default)"
    assert rows["body.encoder.layers.encoder_layer_11"]["status"] == "degenerate (no gradient reaches it)"


def test_vit_image_size_must_be_a_multiple_of_the_patch() -> None:
    from niwt.models.networks import ModelError

    with pytest.raises(ModelError, match="multiple of 16, got 40"):
        build_model("vit_b_16", 3, image_size=40)


def test_vit_injection_by_double_backprop_matches_the_jacobian() -> None:
    """Double backprop through attention (the math kernel: the fused one has no double backward) and the
    dense Jacobian learn the same rows."""
    from niwt.injection.niwt import inject
    from niwt.params import InjectParams

    model = _niwt("vit_b_16", _plain("vit_b_16"))
    trunk, head = split_at(model, f"body.{VIT_BLOCK}")
    acts = trunk(torch.randn(3, 3, SIZE, SIZE)).detach()
    alpha_hat = torch.randn(2, acts.shape[1], generator=torch.Generator().manual_seed(1))
    cfg = InjectParams(max_iters=4, patience=10**9, batch_size=4)
    rows = {solver: inject(head, acts, alpha_hat, model.classifier.weight.detach(), cfg, solver, pooling="sum",
                           seed=0, lr=1e-2, lambda_=1e-3) for solver in ("double_backprop", "jacobian")}
    assert rows["jacobian"].solver == "jacobian (dense)" and rows["double_backprop"].iterations == 4
    torch.testing.assert_close(rows["double_backprop"].weight, rows["jacobian"].weight, rtol=1e-4, atol=1e-5)


def test_layers_that_are_not_one_computed_tensor_are_one_line_errors() -> None:
    """A ViT's ``heads`` (an identity once the classifier moved out) is the body's output itself: cut there
    (an identity head), then refused as no map, not a KeyError; a block's attention returns (output,
    weights): refused by name, never a traceback."""
    from niwt.models.networks import ModelError

    model = _niwt("vit_b_16", _plain("vit_b_16"))
    _, head = split_at(model, "body.heads")
    x = torch.randn(2, 768)
    assert torch.equal(head(x), x)
    with pytest.raises(ModelError, match=r"importance layer 'body.heads' outputs shape \[768\] per image"):
        check_layer(model, "body.heads", SIZE)
    with pytest.raises(ModelError, match="returns a tuple, not one tensor: choose the block around it"):
        importance(model, f"body.{VIT_BLOCK}.self_attention", torch.randn(1, 3, SIZE, SIZE), torch.tensor([0]))

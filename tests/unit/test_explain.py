"""Grad-CAM, the inverse map (importance -> attributes), neuron names and the report renderers."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from niwt.explain import report as rp
from niwt.explain.gradcam import gradcam, overlay, to_rgb
from niwt.explain.inverse import neuron_names, predict_domain, top_attributes
from niwt.importance.capture import importance
from niwt.mapping.linear import fit_inverse_map, normalize_domain
from niwt.models.networks import small_cnn, split_at
from niwt.params import MappingParams

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = small_cnn(5, width=4, hidden=8, image_size=16).eval()
    images = torch.randn(3, 3, 16, 16)
    return model, images


def test_gradcam_matches_the_definition(net) -> None:
    """relu(sum_k mean_ij(dy_c/dA_k) A_k), computed independently through split_at."""
    model, images = net
    targets = torch.tensor([0, 4, 2])
    out = gradcam(model, "body.block4", images, targets)
    trunk, head = split_at(model, "body.block4")
    act = trunk(images).detach().requires_grad_(True)
    logits = model.classifier(head(act))
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), act)
    raw = F.relu((grad.mean((2, 3))[:, :, None, None] * act).sum(1)).detach()
    torch.testing.assert_close(out.raw, raw)
    torch.testing.assert_close(out.logits, logits.detach())
    assert out.cam.shape == (3, 16, 16)
    assert float(out.cam.min()) >= 0 and float(out.cam.max()) <= 1
    for i in range(3):  # every non-zero map peaks at 1
        assert out.raw[i].max() == 0 or abs(float(out.cam[i].max()) - 1) < 1e-5
    # the importance of the same pass is NIWT's alpha (sum-pooled gradient)
    torch.testing.assert_close(out.importance, importance(model, "body.block4", images, targets, "sum"))


def test_gradcam_defaults_to_prediction_and_leaves_model_untouched(net) -> None:
    model, images = net
    model.train()
    out = gradcam(model, "body.block4", images)
    assert model.training
    assert torch.equal(out.targets, out.logits.argmax(1))
    assert all(p.grad is None for p in model.parameters())
    single = gradcam(model, "body.block4", images, 3)  # one int: the same class for all images
    assert single.targets.tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="target classes"):
        gradcam(model, "body.block4", images, 7)


def test_overlay_and_rgb_ranges(net) -> None:
    _, images = net
    rgb = to_rgb(images[0])
    assert rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    blended = overlay(rgb, np.linspace(0, 1, 256).reshape(16, 16))
    assert blended.shape == rgb.shape and blended.min() >= 0 and blended.max() <= 1


def test_overlay_keeps_the_colour_of_what_matters() -> None:
    """Where the map is 1 the pixel keeps its colour up to a light tint; where it is 0 it is only darker
    (same hue); a half-and-half jet blend moved a red object half-way to jet's colours."""
    rgb = np.zeros((2, 1, 3))
    rgb[:, 0] = [0.8, 0.1, 0.1]  # a red object
    out = overlay(rgb, np.array([[1.0], [0.0]]), floor=0.3, tint=0.2)
    heat_top = np.array(__import__("matplotlib").colormaps["jet"](1.0)[:3])
    np.testing.assert_allclose(out[0, 0], 0.8 * rgb[0, 0] + 0.2 * heat_top, atol=1e-12)
    np.testing.assert_allclose(out[1, 0], 0.3 * rgb[1, 0], atol=1e-12)
    assert np.abs(out[0, 0] - rgb[0, 0]).max() <= 0.2


def _planted(n_classes=12, a=6, k=10, per_class=20, seed=0):
    """Importances that are a noisy linear function of the class's (normalised) domain vector."""
    rng = np.random.default_rng(seed)
    domain = rng.uniform(0, 100, size=(n_classes, a)).astype(np.float32)
    mix = rng.normal(size=(k, a)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    unit = normalize_domain(torch.as_tensor(domain)).numpy()
    alphas = unit[labels] @ mix.T + 0.01 * rng.normal(size=(len(labels), k)).astype(np.float32)
    alphas *= rng.uniform(0.1, 50, size=(len(labels), 1)).astype(np.float32)  # per-image scale must not matter
    return domain, labels, alphas


def test_inverse_map_recovers_domain_vectors() -> None:
    domain, labels, alphas = _planted()
    cfg = MappingParams(epochs=40, lr=(0.02,), batch_size=32)
    inv = fit_inverse_map(domain, labels, alphas, np.array([1, 5]), cfg, seed=0)
    assert len(inv.history) == 40 and 1 <= inv.best_epoch <= 40
    assert {"epoch", "val_loss", "val_rank_corr"} <= set(inv.history[0])
    pred = predict_domain(inv.weight, inv.bias, alphas)
    target = normalize_domain(torch.as_tensor(domain))[labels]
    assert float(F.cosine_similarity(pred, target, dim=1).mean()) > 0.95
    # deterministic given the seed; scale-free in the importance
    again = fit_inverse_map(domain, labels, alphas, np.array([1, 5]), cfg, seed=0)
    torch.testing.assert_close(inv.weight, again.weight)
    torch.testing.assert_close(predict_domain(inv.weight, inv.bias, alphas[:3] * 7), pred[:3])


def test_inverse_map_needs_images_on_both_sides() -> None:
    domain, labels, alphas = _planted()
    with pytest.raises(ValueError, match="held-out"):
        fit_inverse_map(domain, labels, alphas, np.arange(12), MappingParams(epochs=1), seed=0)


def test_top_attributes_and_neuron_names_follow_the_weights() -> None:
    names = ["red", "green", "blue", "round"]
    weight = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.5], [1.0, 0.0, 2.5], [0.0, -4.0, 0.1]])  # (a=4, K=3)
    bias = torch.zeros(4)
    att = top_attributes(weight, bias, np.array([5.0, 0.0, 0.0]), names, k=2, class_domain=np.array([3, 0, 1, 0]))
    assert att.names == ["red", "blue"]
    assert att.scores[0] > att.scores[1]
    assert att.cosine == pytest.approx(1.0, abs=1e-6)
    rows = neuron_names(weight, names, top=2)
    assert [r["neuron"] for r in rows] == [0, 1, 2]
    assert (rows[0]["attribute_1"], rows[0]["attribute_2"]) == ("red", "blue")
    assert rows[1]["name"] == "green / red" and rows[1]["negative_attribute"] == "round"
    assert rows[2]["attribute_1"] == "blue" and rows[2]["weight_1"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="attribute names"):
        neuron_names(weight, names[:3])


def test_report_renders_markdown_and_self_contained_html(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    (tmp_path / "panels").mkdir()
    fig.savefig(tmp_path / "panels" / "a.png")
    plt.close(fig)
    blocks = [rp.h1("Title"), rp.para("some `code` and **bold** <tag>"),
              rp.table(["m", "x|y"], [["niwt", "**1.0**"]]), rp.image("panels/a.png", "cap")]
    md = rp.to_markdown(blocks)
    assert "# Title" in md and "![cap](panels/a.png)" in md and "x\\|y" in md
    page = rp.to_html(blocks, tmp_path, "t")
    assert "<b>1.0</b>" in page and "&lt;tag&gt;" in page and "<code>code</code>" in page
    src = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(src) == (tmp_path / "panels" / "a.png").read_bytes()
    assert "http://" not in page and "https://" not in page  # opens offline

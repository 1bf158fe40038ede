"""Exact tests of NIWT's weight optimisation (``niwt.injection.niwt``)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from niwt.importance.capture import importance
from niwt.injection.niwt import (
    PlateauStopper,
    channel_jacobian,
    inject,
    niwt_loss,
    observed_importance,
    seen_centered_init,
)
from niwt.models.networks import small_cnn, split_at
from niwt.params import InjectParams

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    # torch.func's jvp/vmap trigger torch's own deprecation notice for torch.jit.script
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
]

C, H, D = 3, 4, 6  # channels at the layer, spatial side, penultimate features


def conv_head(seed: int = 0) -> nn.Sequential:
    """A frozen nonlinear head: conv -> ReLU -> max-pool -> linear -> tanh."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * (H // 2) ** 2, D), nn.Tanh()).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def brute_force_importance(head: nn.Module, acts: torch.Tensor, w: torch.Tensor, pooling: str) -> torch.Tensor:
    """One autograd call per sample: pool_ij d (w_b . head(a_b)) / d a_b."""
    rows = []
    for b in range(len(acts)):
        a = acts[b:b + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(head(a)[0] @ w[b], a)
        rows.append(g[0].sum((1, 2)) if pooling == "sum" else g[0].mean((1, 2)))
    return torch.stack(rows)


def column_matrix(head: nn.Module, acts: torch.Tensor, pooling: str) -> torch.Tensor:
    """(P, C, D) pooled Jacobian by reverse mode, one backward per output feature d (samples do
    not interact in eval mode, so the gradient of sum_b head(acts)[b, d] is per-sample)."""
    cols = []
    for d in range(D):
        a = acts.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(head(a)[:, d].sum(), a)
        cols.append(g.sum((2, 3)) if pooling == "sum" else g.mean((2, 3)))
    return torch.stack(cols, 2)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_observed_importance_matches_brute_force_and_jacobian(pooling: str) -> None:
    head = conv_head()
    torch.manual_seed(1)
    acts = torch.randn(5, C, H, H)
    w = torch.randn(5, D)
    obs = observed_importance(head, acts, w, pooling, create_graph=False)
    assert obs.shape == (5, C)
    torch.testing.assert_close(obs, brute_force_importance(head, acts, w, pooling), rtol=1e-5, atol=1e-6)
    m = channel_jacobian(head, acts, pooling)
    assert m.shape == (5, C, D) and not m.requires_grad
    torch.testing.assert_close(m, column_matrix(head, acts, pooling), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.einsum("pcd,pd->pc", m, w), obs, rtol=1e-5, atol=1e-5)
    # chunking over samples and channels does not change the result
    chunked = channel_jacobian(head, acts, pooling, batch=2, max_elements=4 * C * H * H)  # 2 + 1 channels
    torch.testing.assert_close(chunked, m, rtol=1e-6, atol=1e-7)


def test_channel_jacobian_head_with_trainable_params_has_no_graph() -> None:
    head = conv_head()
    for p in head.parameters():
        p.requires_grad_(True)
    m = channel_jacobian(head, torch.randn(2, C, H, H), "sum")
    assert not m.requires_grad and m.grad_fn is None


def test_observed_importance_is_linear_in_w() -> None:
    head = conv_head()
    torch.manual_seed(2)
    acts = torch.randn(4, C, H, H)
    w1, w2 = torch.randn(4, D), torch.randn(4, D)

    def alpha(w):
        return observed_importance(head, acts, w, "sum", create_graph=False)

    torch.testing.assert_close(alpha(2 * w1 + w2), 2 * alpha(w1) + alpha(w2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alpha(-3 * w1), -3 * alpha(w1), rtol=1e-5, atol=1e-5)


def test_observed_importance_equals_full_network_importance_and_bias_does_not_enter() -> None:
    torch.manual_seed(0)
    model = small_cnn(4, width=4, hidden=8, image_size=32).eval()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([2, 0, 3])
    trunk, head = split_at(model, "body.block4")
    with torch.no_grad():
        acts = trunk(images)
    w_rows = model.classifier.weight.detach()[targets]
    for pooling in ("sum", "mean"):
        obs = observed_importance(head, acts, w_rows, pooling, create_graph=False)
        ref = importance(model, "body.block4", images, targets, pooling)
        torch.testing.assert_close(obs, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.classifier.bias.add_(torch.tensor([5.0, -3.0, 1.0, 10.0]))
    shifted = importance(model, "body.block4", images, targets, "mean")
    torch.testing.assert_close(shifted, ref, rtol=1e-6, atol=1e-7)


def test_niwt_loss_hand_value() -> None:
    obs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hat = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    w_u = torch.tensor([[1.0, 2.0]])
    mu = torch.zeros(2)
    # cos = [1, 0] -> mean distance 0.5; regulariser 0.1 * 0.5 * (1 + 4) = 0.25
    assert niwt_loss(obs, hat, w_u, mu, 0.1).item() == pytest.approx(0.75)
    assert niwt_loss(3 * obs, hat, w_u, mu, 0.0).item() == pytest.approx(0.5)  # scale-free


def test_solvers_agree_from_same_seed() -> None:
    head = conv_head()
    torch.manual_seed(3)
    acts = torch.randn(6, C, H, H)
    alpha_hat = torch.randn(2, C)
    w_seen = torch.randn(5, D)
    cfg, opt = InjectParams(batch_size=4, max_iters=40, patience=1000), {"lr": 0.01, "lambda_": 1e-3}
    jac = inject(head, acts, alpha_hat, w_seen, cfg, solver="jacobian", pooling="sum", seed=7, **opt)
    dbp = inject(head, acts, alpha_hat, w_seen, cfg, solver="double_backprop", pooling="sum", seed=7, **opt)
    assert jac.iterations == dbp.iterations == 40
    assert len(jac.history) == 40
    assert jac.history[0] == pytest.approx(dbp.history[0], abs=1e-6)  # same init, same first batch
    assert jac.final_loss == pytest.approx(dbp.final_loss, abs=1e-4)
    torch.testing.assert_close(jac.weight, dbp.weight, rtol=1e-4, atol=1e-4)
    assert jac.history[-1] < jac.history[0]
    pre = channel_jacobian(head, acts, "sum")  # precomputed products give the same run
    again = inject(head, acts, alpha_hat, w_seen, cfg, solver="jacobian", jacobian=pre, pooling="sum", seed=7, **opt)
    assert torch.equal(again.weight, jac.weight)
    with pytest.raises(ValueError, match="unknown solver"):
        inject(head, acts, alpha_hat, w_seen, cfg, solver="newton", pooling="sum", seed=7, **opt)


def test_recovers_planted_row_when_cosine_one_is_reachable() -> None:
    """Head = global average pooling + linear L (C=6 > D=4, L^T injective): alpha_obs = L^T w
    for every image, so alpha_hat = L^T w* is matched exactly only by w = s w*, s > 0."""
    torch.manual_seed(0)
    c, d = 6, 4
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, d)).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    lin = head[2].weight  # (D, C)
    acts = torch.randn(8, c, 3, 3)
    torch.testing.assert_close(channel_jacobian(head, acts, "sum"), lin.T.expand(8, c, d))
    w_star = torch.randn(2, d)
    alpha_hat = w_star @ lin
    cfg = InjectParams(batch_size=8, max_iters=3000, patience=100)
    res = inject(head, acts, alpha_hat, torch.randn(5, d), cfg, pooling="sum", seed=0, lr=0.05, lambda_=0.0)
    assert res.final_loss < 1e-4
    assert res.history[0] > 0.05
    assert F.cosine_similarity(res.weight @ lin, alpha_hat, dim=1).min() > 0.9999
    assert F.cosine_similarity(res.weight, w_star, dim=1).min() > 0.999


def test_large_lambda_pulls_rows_to_mean_seen_row() -> None:
    torch.manual_seed(0)
    c, d = 6, 4
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, d)).eval()
    acts = torch.randn(8, c, 3, 3)
    alpha_hat = torch.randn(2, c)
    w_seen = torch.randn(5, d)
    mu = w_seen.mean(0)
    far = inject(head, acts, alpha_hat, w_seen,
                 InjectParams(batch_size=8, max_iters=300, patience=10**6), pooling="sum", seed=0, lr=0.01, lambda_=0.0)
    near = inject(head, acts, alpha_hat, w_seen,
                  InjectParams(batch_size=8, max_iters=300, patience=10**6),
                  pooling="sum", seed=0, lr=0.05, lambda_=1e3)
    assert (far.weight - mu).abs().max() > 0.5
    assert (near.weight - mu).abs().max() < 1e-2


def test_plateau_stopper_follows_original_rule() -> None:
    s = PlateauStopper(patience=3, min_improvement=0.01)
    assert s.counter == 1 and s.monitor is None
    # (loss, counter after, monitor after)
    trace = [
        (1.0, 1, 1.0),  # first loss only sets the monitor; the counter stays at its start value 1
        (0.995, 2, 1.0),  # 0.5 % better: not enough
        (0.98, 0, 0.98),  # 2 % better: reset to 0, new monitor
        (0.975, 1, 0.98),
        (0.97, 0, 0.97),  # 1.02 % better than the monitor
        (0.9605, 1, 0.97),  # 0.98 %: not enough
        (0.961, 2, 0.97),
        (0.9602, 0, 0.9602),  # vs the monitor (0.97), not the previous loss: 1.01 % -> reset
        (2.0, 1, 0.9602),
        (2.0, 2, 0.9602),
        (2.0, 3, 0.9602),
    ]
    for loss, counter, monitor in trace:
        assert s.step(loss) is False
        assert (s.counter, s.monitor) == (counter, monitor), loss
    assert s.step(0.0) is True  # counter checked before the (huge) improvement is looked at
    assert s.counter == 3

    assert PlateauStopper(patience=1).step(5.0) is True  # the counter starts at 1
    s2 = PlateauStopper(patience=2)
    assert [s2.step(1.0) for _ in range(3)] == [False, False, True]
    s0 = PlateauStopper(patience=3)
    assert [s0.step(x) for x in (0.0, -1.0, -2.0, -3.0)] == [False, False, False, True]  # monitor 0


def test_optimise_stops_on_plateau_with_iteration_count() -> None:
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    acts = torch.randn(4, 3, 2, 2)
    cfg = InjectParams(batch_size=4, max_iters=100, patience=5)
    res = inject(head, acts, torch.randn(1, 3), torch.randn(3, 2), cfg, pooling="sum", seed=0, lr=0.0, lambda_=0.0)
    # lr 0: the loss never changes; counter 1 -> 2 (2nd) ... -> 5 (5th call); the 6th call stops
    assert res.iterations == 6 and len(res.history) == 6
    assert len(set(res.history)) == 1
    res = inject(head, acts, torch.randn(1, 3), torch.randn(3, 2),
                 InjectParams(batch_size=4, max_iters=3, patience=50), pooling="sum", seed=0, lr=0.0, lambda_=1e-3)
    assert res.iterations == 3


def test_seen_centered_init_statistics() -> None:
    w_seen = torch.tensor([[0.0, 1, 2], [2, 1, 0], [4, 1, 2], [2, 5, 0]], dtype=torch.float64)
    mu = torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)
    sigma = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64).sqrt()  # population std (divide by 4)
    draw = seen_centered_init(w_seen, 200_000, torch.Generator().manual_seed(0))
    assert draw.shape == (200_000, 3) and draw.dtype == torch.float64
    torch.testing.assert_close(draw.mean(0), mu, rtol=0, atol=0.02)
    # relative tolerance 1 %: the sample std (divide by 3) would be 15 % larger
    torch.testing.assert_close(draw.std(0), sigma, rtol=0.01, atol=0)
    same = seen_centered_init(w_seen, 5, torch.Generator().manual_seed(3))
    assert torch.equal(same, seen_centered_init(w_seen, 5, torch.Generator().manual_seed(3)))
    mean_rows = seen_centered_init(w_seen, 4, torch.Generator().manual_seed(0), mode="mean")
    assert torch.equal(mean_rows, mu.expand(4, 3))


def test_pool_from_a_folder_of_images(tmp_path) -> None:
    """``inject.pool: <folder>``: the original's random natural images; any image files, found
    recursively, sampled by seed; a folder without images is one clear error."""
    import numpy as np
    from PIL import Image

    from niwt.data.tables import SplitTable
    from niwt.errors import InputError
    from niwt.injection.context import pool_activations, pool_folder_images

    (tmp_path / "pool" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        where = tmp_path / "pool" / ("sub" if i % 2 else "") / f"img{i}.{'png' if i < 3 else 'JPG'}"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(where, format="PNG")
    (tmp_path / "pool" / "notes.txt").write_text("not an image")
    found = pool_folder_images(str(tmp_path / "pool"))
    assert len(found) == 5 and found == sorted(found) and not any(f.endswith(".txt") for f in found)
    trunk = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    empty = SplitTable(np.array([], dtype=np.int64), [], np.array([], dtype=np.int64), np.array([], dtype=str))
    cfg = InjectParams(pool=str(tmp_path / "pool"), pool_size=3)
    a = pool_activations(trunk, cfg, 0, empty, 16, torch.device("cpu"), batch_size=2)
    assert a.shape == (3, 2, 14, 14)
    assert torch.equal(a, pool_activations(trunk, cfg, 0, empty, 16, torch.device("cpu"), batch_size=2))  # seeded
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match=r"nothing: inject\.pool names this folder but it holds no images"):
        pool_folder_images(str(tmp_path / "nothing"))
    with pytest.raises(InputError, match=r"inject\.pool: '.*missing' is neither 'train', 'noise' nor a folder"):
        pool_folder_images(str(tmp_path / "missing"))
    # a file named like an image that is none: named, and not blamed on prepare (which never reads a pool)
    for i in range(3):
        (tmp_path / "nothing" / f"fake{i}.jpg").write_text("not an image")
    cfg = InjectParams(pool=str(tmp_path / "nothing"), pool_size=3)
    with pytest.raises(InputError) as caught:
        pool_activations(trunk, cfg, 0, empty, 16, torch.device("cpu"), batch_size=2)
    assert re.fullmatch(r"\S*nothing/fake0\.jpg: cannot read image \(.*\); inject\.pool: '\S*nothing' may hold "
                        r"only images: remove or convert this file", str(caught.value)), caught.value


@pytest.mark.parametrize("body, error", [
    ("X = 1\n", r"mod_[a-z]+\.py: an injection method module must declare METHOD = Method\(\.\.\.\)"),
    ("from niwt.injection.registry import Method\nMETHOD = Method('other', 'Other', print)\n",
     r"mod_[a-z]+\.py: METHOD\.name is 'other', but the module registers 'mod_[a-z]+'"),
    ("from niwt.injection.registry import Method\n"
     "METHOD = Method(__name__.rsplit('.')[-1], 'M', print, lambda cfg: [{'a': 1.0}, {'b': 2.0}])\n",
     r"mod_[a-z]+\.py: the settings of 'mod_[a-z]+' must all name the same hyperparameters"),
])
def test_a_bad_method_module_is_one_clear_error_naming_it(body: str, error: str, tmp_path, monkeypatch) -> None:
    """What a method module declares is checked when it is loaded, and the error names its file."""
    import uuid

    from niwt.errors import InputError
    from niwt.injection import registry
    from niwt.injection.methods import candidates
    from niwt.params import MappingParams

    name = "mod_" + "".join(c for c in uuid.uuid4().hex if c.isalpha())  # a fresh module per case
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, name))
    assert name in registry.METHODS and registry.ordered([name, "niwt"]) == ["niwt", name]
    with pytest.raises(InputError, match=error):
        candidates(name, InjectParams(), MappingParams())


def test_unknown_method_is_a_key_error_listing_the_registered_ones() -> None:
    from niwt.injection.methods import method

    with pytest.raises(KeyError, match="unknown injection method 'nwit'; registered: niwt icis regression"):
        method("nwit")

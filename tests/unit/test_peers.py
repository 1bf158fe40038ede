"""Tests of the peer methods: ESZSL closed form, ridge weight regression and ICIS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from niwt.evaluation.metrics import mean_per_class_accuracy
from niwt.peers.eszsl import eszsl_scores, fit_eszsl
from niwt.peers.icis import (
    IcisConfig,
    IcisModel,
    early_stopping_slope,
    fit_icis,
    icis_loss,
    predict_unseen_rows,
)
from niwt.peers.regression import fit_ridge, heldout_r2, predict_rows, rescale_rows


def _row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_eszsl_matches_inverse_formula() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8))
    y = rng.integers(0, 5, 30)
    S_att = rng.normal(size=(5, 3))
    alpha, gamma = 0.5, 2.0
    Y = -np.ones((30, 5))
    Y[np.arange(30), y] = 1.0
    ref = np.linalg.inv(X.T @ X + gamma * np.eye(8)) @ X.T @ Y @ S_att @ np.linalg.inv(
        S_att.T @ S_att + alpha * np.eye(3))
    V = fit_eszsl(X, y, S_att, alpha, gamma)
    assert V.shape == (8, 3)
    np.testing.assert_allclose(V, ref, atol=1e-8)
    np.testing.assert_allclose(eszsl_scores(X, V, S_att), X @ ref @ S_att.T, atol=1e-8)


def _planted_eszsl(noise: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Seen attributes +-e_i (S^T S = 2I, sum 0), x = P s_c, n per class: V = 4n/((2n+g)(2+a)) P."""
    a, d, n = 6, 15, 5
    seen = np.concatenate([np.eye(a), -np.eye(a)])  # (12, a)
    unseen = rng.normal(size=(8, a))
    unseen /= np.linalg.norm(unseen, axis=1, keepdims=True)
    P = np.linalg.qr(rng.normal(size=(d, a)))[0]  # (d, a) orthonormal columns
    y = np.repeat(np.arange(12), n)
    X = seen[y] @ P.T + noise * rng.normal(size=(y.size, d))
    yu = np.repeat(np.arange(8), n)
    Xu = unseen[yu] @ P.T + noise * rng.normal(size=(yu.size, d))
    return seen, unseen, P, X, y, Xu, yu


def test_eszsl_recovers_planted_structure() -> None:
    rng = np.random.default_rng(1)
    seen, unseen, P, X, y, Xu, yu = _planted_eszsl(0.0, rng)
    alpha, gamma, n = 0.3, 0.7, 5  # n samples per class
    V = fit_eszsl(X, y, seen, alpha, gamma)
    np.testing.assert_allclose(V, 4 * n / ((2 * n + gamma) * (2 + alpha)) * P, atol=1e-10)
    seen, unseen, P, X, y, Xu, yu = _planted_eszsl(0.02, rng)
    V = fit_eszsl(X, y, seen, alpha, gamma)
    pred = np.argmax(eszsl_scores(Xu, V, unseen), axis=1)
    assert mean_per_class_accuracy(yu, pred) == 1.0


def test_ridge_matches_normal_equations() -> None:
    rng = np.random.default_rng(3)
    D, W, alpha = rng.normal(size=(20, 4)), rng.normal(size=(20, 7)), 0.8
    Z = np.hstack([D, np.ones((20, 1))])
    pen = alpha * np.diag([1.0, 1.0, 1.0, 1.0, 0.0])  # intercept unpenalised
    theta = np.linalg.solve(Z.T @ Z + pen, Z.T @ W)
    B, bias = fit_ridge(D, W, alpha)
    np.testing.assert_allclose(B, theta[:4], atol=1e-10)
    np.testing.assert_allclose(bias, theta[4], atol=1e-10)
    np.testing.assert_allclose(predict_rows(D, B, bias), Z @ theta, atol=1e-10)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("alpha", [0.01, 0.5, 3.0])
def test_heldout_r2_is_leave_one_class_out_refits(alpha: float, rescale: bool) -> None:
    """The closed form equals refitting without each class (more attributes than classes, as CUB's
    312 for 100-150 classes), scaling each held-out row as rescale_rows ships it."""
    rng = np.random.default_rng(0)
    D, W = rng.normal(size=(12, 20)), rng.normal(size=(12, 5))
    pred = []
    for i in range(12):
        rest = np.arange(12) != i
        B, bias = fit_ridge(D[rest], W[rest], alpha)
        row = predict_rows(D[i:i + 1], B, bias)
        pred.append((rescale_rows(row, W[rest]) if rescale else row)[0])
    brute = 1 - ((W - np.array(pred)) ** 2).sum() / ((W - W.mean(0)) ** 2).sum()
    assert heldout_r2(D, W, alpha, rescale=rescale) == pytest.approx(brute, abs=1e-10)


def test_heldout_r2_peaks_at_the_planted_noise_level_and_refuses_interpolation() -> None:
    """Rows linear in the attributes plus noise: a perfect linear map has R² near 1 at a small
    alpha and loses it as alpha grows; alpha 0 with fewer classes than attributes interpolates every
    class (leverage 1), which no held-out class can be: -inf."""
    rng = np.random.default_rng(1)
    D = rng.normal(size=(60, 8))
    W = D @ rng.normal(size=(8, 6)) + 0.01 * rng.normal(size=(60, 6))
    scores = [heldout_r2(D, W, a) for a in (1e-3, 1.0, 100.0)]
    assert scores[0] > 0.99 and scores[0] > scores[1] > scores[2]
    assert heldout_r2(rng.normal(size=(5, 9)), rng.normal(size=(5, 3)), 0.0) == -np.inf
    # alpha 0 with an exactly singular design (a constant attribute): no unique fit, no crash
    constant = np.hstack([rng.normal(size=(30, 3)), np.ones((30, 1))])
    assert heldout_r2(constant, rng.normal(size=(30, 2)), 0.0) == -np.inf
    B, _ = fit_ridge(constant, rng.normal(size=(30, 2)), 0.0)  # the minimum-norm fit
    assert np.all(np.isfinite(B))
    # two classes: holding one out leaves one row, the prediction whatever alpha is: no ranking
    assert np.isnan(heldout_r2(rng.normal(size=(2, 4)), rng.normal(size=(2, 3)), 1.0))


def test_rescale_rows() -> None:
    W_seen = np.array([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1 -> mean 3
    W_u = np.array([[0.0, 0.5], [1.0, 1.0], [0.0, 0.0]])
    out = rescale_rows(W_u, W_seen)
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), [3.0, 3.0])
    np.testing.assert_allclose(_row_cos(out[:2], W_u[:2]), [1.0, 1.0])
    np.testing.assert_array_equal(out[2], [0.0, 0.0])


def _planted_icis() -> tuple[np.ndarray, np.ndarray]:
    """Linear attribute -> weight map: 40 seen and 10 unseen classes, A=16, D+1=33."""
    rng = np.random.default_rng(0)
    D_all = rng.normal(size=(50, 16))
    D_all /= np.linalg.norm(D_all, axis=1, keepdims=True)
    return D_all, D_all @ rng.normal(size=(16, 33))


CFG = IcisConfig(hidden=128, max_epochs=150)


def test_icis_learns_planted_map_and_is_deterministic() -> None:
    D_all, W_all = _planted_icis()
    model = fit_icis(D_all, W_all[:40], 40, CFG)
    assert model.history[-1] < 0.1 * model.history[0]
    assert len(model.history) < CFG.max_epochs  # the slope rule stopped it
    pred = predict_unseen_rows(model, D_all[40:])
    assert pred.shape == (10, 33)
    assert _row_cos(pred, W_all[40:]).mean() > 0.9
    again = predict_unseen_rows(fit_icis(D_all, W_all[:40], 40, CFG), D_all[40:])
    np.testing.assert_array_equal(pred, again)
    other = predict_unseen_rows(fit_icis(D_all, W_all[:40], 40, IcisConfig(hidden=128, seed=1)), D_all[40:])
    assert not np.array_equal(pred, other)


def test_icis_unseen_targets_are_masked() -> None:
    torch.manual_seed(0)
    model = IcisModel(6, 9, 16, torch.Generator().manual_seed(0))
    a, w = torch.randn(8, 6), torch.randn(8, 9)
    mask = torch.tensor([1.0] * 5 + [0.0] * 3)
    w_other = w.clone()
    w_other[5:] = torch.randn(3, 9) * 10.0  # change only the unseen target rows

    def loss_and_grads(target: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = icis_loss(model, a, target, mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss0, grads0 = loss_and_grads(w)
    loss1, grads1 = loss_and_grads(w_other)
    assert torch.equal(loss0, loss1)
    assert all(torch.allclose(g0, g1) for g0, g1 in zip(grads0, grads1, strict=True))
    # the a<-a term still sees unseen rows: changing their attributes changes the loss
    a2 = a.clone()
    a2[5:] = torch.randn(3, 6)
    assert not torch.equal(icis_loss(model, a2, w, mask).detach(), loss0)


def test_icis_include_unseen_changes_training() -> None:
    D_all, W_all = _planted_icis()
    cfg = IcisConfig(hidden=32, max_epochs=5, early_stop=False)
    with_u = fit_icis(D_all, W_all[:40], 40, cfg)
    without = fit_icis(D_all, W_all[:40], 40, IcisConfig(hidden=32, max_epochs=5, early_stop=False,
                                                         include_unseen=False))
    assert with_u.history != without.history


def test_early_stopping_slope() -> None:
    assert early_stopping_slope([1.0] * 21) is None
    assert early_stopping_slope([100.0 - k for k in range(22)]) == pytest.approx(1.0)
    assert early_stopping_slope([0.5] * 30) == pytest.approx(0.0)

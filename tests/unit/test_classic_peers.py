"""Tests of the classic bilinear peers (DEVISE, ALE, SJE, SAE): hand-derived losses, gradients, SGD steps and
SAE's closed form, then a learning check on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from niwt.errors import InputError
from niwt.evaluation.metrics import mean_per_class_accuracy
from niwt.peers.ale import ale_loss, fit_ale, rank_weights
from niwt.peers.bilinear import class_rows, hinge_terms
from niwt.peers.devise import devise_loss, fit_devise
from niwt.peers.sae import fit_sae, sae_rows, sae_system
from niwt.peers.sje import fit_sje, sje_loss

# Three images, three classes, two attributes, V = I, margin 0.5 (chosen so that no hinge sits on its kink).
#   S = [[1, 0], [0, 1], [1, 1]];  x1 = [2, 1] (class 0), x2 = [3, 1] (class 1), x3 = [1, 2] (class 2)
#   scores x^T V S^T:  x1 -> [2, 1, 3] (true 2),  x2 -> [3, 1, 4] (true 1),  x3 -> [1, 2, 3] (true 3)
#   hinges [0.5 + s_j - s_y]_+ over wrong j:
#     x1: j=1 -> -0.5 -> 0,   j=2 -> 1.5                  (one violator)
#     x2: j=0 -> 2.5,         j=2 -> 3.5                  (two violators)
#     x3: j=0 -> -1.5 -> 0,   j=1 -> -0.5 -> 0            (none)
S3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
X3 = torch.tensor([[2.0, 1.0], [3.0, 1.0], [1.0, 2.0]])
Y3 = torch.tensor([0, 1, 2])
MARGIN = 0.5


def _loss_and_grad(loss, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    V = V.clone().requires_grad_(True)
    per_image = loss(X3 @ V @ S3.T, Y3, margin=MARGIN)
    (grad,) = torch.autograd.grad(per_image.mean(), V)
    return per_image.detach(), grad


def test_hinge_terms_by_hand() -> None:
    scores = X3 @ S3.T
    expected = torch.tensor([[0.0, 0.0, 1.5], [2.5, 0.0, 3.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(hinge_terms(scores, Y3, MARGIN), expected)


def test_devise_loss_gradient_and_one_step_by_hand() -> None:
    # Losses: sums of the hinges, [1.5, 6.0, 0.0].
    # d s_j / dV = x s_j^T, so each active hinge adds x (s_j - s_y)^T:
    #   x1: [2,1]^T ([1,1] - [1,0]) = [[0, 2], [0, 1]]
    #   x2: [3,1]^T (([1,0] - [0,1]) + ([1,1] - [0,1])) = [3,1]^T [2, -1] = [[6, -3], [2, -1]]
    #   mean over 3 images: [[6, -1], [2, 0]] / 3
    # One full-batch SGD step from V = I with lr 0.3: I - 0.3 * grad = [[0.4, 0.1], [-0.2, 1.0]].
    losses, grad = _loss_and_grad(devise_loss, torch.eye(2))
    torch.testing.assert_close(losses, torch.tensor([1.5, 6.0, 0.0]))
    torch.testing.assert_close(grad, torch.tensor([[2.0, -1 / 3], [2 / 3, 0.0]]))
    V1 = fit_devise(X3, Y3, S3, lr=0.3, epochs=1, batch_size=3, margin=MARGIN, normalize=False, init=torch.eye(2))
    torch.testing.assert_close(V1, torch.tensor([[0.4, 0.1], [-0.2, 1.0]]))


def test_ale_rank_weights_by_hand() -> None:
    # l_r / r with l_r = 1 + 1/2 + ... + 1/r:  r=0 -> 0,  1 -> 1,  2 -> 1.5/2,  3 -> (11/6)/3
    torch.testing.assert_close(rank_weights(3), torch.tensor([0.0, 1.0, 0.75, 11 / 18], dtype=torch.float64))


def test_ale_loss_gradient_and_one_step_by_hand() -> None:
    # r = [1, 2, 0] violators -> weights [1, 0.75, 0]; losses = weight * DEVISE sum = [1.5, 4.5, 0].
    # Gradient: DEVISE's per-image terms, weighted:
    #   1 * [[0, 2], [0, 1]] + 0.75 * [[6, -3], [2, -1]] = [[4.5, -0.25], [1.5, 0.25]];  / 3
    # One step from I with lr 0.3: [[1 - 0.45, 0.025], [-0.15, 1 - 0.025]].
    losses, grad = _loss_and_grad(ale_loss, torch.eye(2))
    torch.testing.assert_close(losses, torch.tensor([1.5, 4.5, 0.0]))
    torch.testing.assert_close(grad, torch.tensor([[1.5, -1 / 12], [0.5, 1 / 12]]))
    V1 = fit_ale(X3, Y3, S3, lr=0.3, epochs=1, batch_size=3, margin=MARGIN, normalize=False, init=torch.eye(2))
    torch.testing.assert_close(V1, torch.tensor([[0.55, 0.025], [-0.15, 0.975]]))


def test_sje_loss_gradient_and_one_step_by_hand() -> None:
    # max_j (Delta + s_j) - s_y, Delta = 0.5 for wrong j, 0 for the true class:
    #   x1: [2, 1.5, 3.5] -> 3.5 - 2 = 1.5 (argmax j=2);   x2: [3.5, 1, 4.5] -> 4.5 - 1 = 3.5 (j=2)
    #   x3: [1.5, 2.5, 3] -> 3 - 3 = 0 (the true class wins, no gradient)
    # Gradient x (s_argmax - s_y)^T:  x1: [[0, 2], [0, 1]];  x2: [3,1]^T [1, 0] = [[3, 0], [1, 0]];  / 3
    # One step from I with lr 0.3: [[1 - 0.3, -0.2], [-0.1, 1 - 0.1]].
    losses, grad = _loss_and_grad(sje_loss, torch.eye(2))
    torch.testing.assert_close(losses, torch.tensor([1.5, 3.5, 0.0]))
    torch.testing.assert_close(grad, torch.tensor([[1.0, 2 / 3], [1 / 3, 1 / 3]]))
    V1 = fit_sje(X3, Y3, S3, lr=0.3, epochs=1, batch_size=3, margin=MARGIN, normalize=False, init=torch.eye(2))
    torch.testing.assert_close(V1, torch.tensor([[0.7, -0.2], [-0.1, 0.9]]))


def test_sje_ties_share_the_gradient() -> None:
    # At V = 0 every score is 0, so both wrong classes tie at Delta = 1 for x = [1, 0] of class 0; the
    # gradient is x (mean(s_1, s_2) - s_0)^T = [1, 0]^T ([0.5, 1] - [1, 0]) = [[-0.5, 1], [0, 0]].
    V = torch.zeros(2, 2, requires_grad=True)
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    (grad,) = torch.autograd.grad(sje_loss(x @ V @ S3.T, y).sum(), V)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 1.0], [0.0, 0.0]]))


@pytest.mark.parametrize("fit", [fit_devise, fit_ale, fit_sje])
def test_margin_is_redundant_with_lr_from_zero(fit) -> None:
    # The losses are positively homogeneous: margin m with lr = m * lr' gives m times the margin-1 iterates.
    X, y, S, *_ = _planted(np.random.default_rng(5))
    a = fit(X, y, S, lr=0.4, epochs=2, batch_size=7, margin=4.0, seed=3)
    b = fit(X, y, S, lr=0.1, epochs=2, batch_size=7, margin=1.0, seed=3)
    torch.testing.assert_close(a, 4.0 * b, rtol=1e-5, atol=1e-6)


def test_sgd_is_seeded_and_normalises_images() -> None:
    X, y, S, *_ = _planted(np.random.default_rng(6))
    kw = dict(lr=0.3, epochs=2, batch_size=8)
    V = fit_ale(X, y, S, seed=0, **kw)
    assert V.dtype == torch.float32 and V.shape == (X.shape[1], S.shape[1])
    assert torch.equal(V, fit_ale(X, y, S, seed=0, **kw))
    assert not torch.equal(V, fit_ale(X, y, S, seed=1, **kw))
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    torch.testing.assert_close(V, fit_ale(unit, y, S, seed=0, normalize=False, **kw))


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="labels"):
        fit_devise(X3, torch.tensor([0, 1, 3]), S3)
    with pytest.raises(InputError, match="3 feature rows for 2 labels"):
        fit_sje(X3, Y3[:2], S3)
    with pytest.raises(InputError, match="lr > 0"):
        fit_ale(X3, Y3, S3, lr=0.0)
    with pytest.raises(InputError, match="lam > 0"):
        fit_sae(X3, Y3, S3, lam=0.0)
    with pytest.raises(InputError, match="reading"):
        sae_rows(torch.eye(2), S3, reading="both")


def _sylvester_parts(X: np.ndarray, y: np.ndarray, S: np.ndarray, lam: float) -> tuple[np.ndarray, ...]:
    """The paper's (S S^T, lam X X^T, (1 + lam) S X^T) in row layout, with S_n = S[y]."""
    Sn = S[y]
    return Sn.T @ Sn, lam * X.T @ X, (1 + lam) * Sn.T @ X


def test_sae_scalar_case_by_hand() -> None:
    # D = A = 1: x = [2, 1], s_n = [1, 3].  sum s^2 = 10, sum x^2 = 5, sum s x = 5, so
    # W = (1 + lam) * 5 / (10 + 5 lam):  lam = 1 -> 2/3,  lam = 2 -> 3/4.
    X, y, S = np.array([[2.0], [1.0]]), np.array([0, 1]), np.array([[1.0], [3.0]])
    assert fit_sae(X, y, S, lam=1.0, normalize=False).item() == pytest.approx(2 / 3, rel=1e-6)
    assert fit_sae(X, y, S, lam=2.0, normalize=False).item() == pytest.approx(3 / 4, rel=1e-6)


def test_sae_matches_sylvester_solvers_and_identity() -> None:
    rng = np.random.default_rng(0)
    X, y, S, lam = rng.normal(size=(12, 4)), np.arange(12) % 4, rng.normal(size=(4, 3)), 0.7
    A, B, C = _sylvester_parts(X, y, S, lam)
    W = fit_sae(X, y, S, lam=lam, normalize=False).double().numpy().T  # (A, D)
    np.testing.assert_allclose(W, scipy.linalg.solve_sylvester(A, B, C), rtol=1e-5, atol=1e-6)
    kron = np.kron(np.eye(4), A) + np.kron(B.T, np.eye(3))  # vec(A W + W B), column-major vec
    np.testing.assert_allclose(W, np.linalg.solve(kron, C.flatten("F")).reshape(3, 4, order="F"), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(A @ W + W @ B, C, rtol=1e-5, atol=1e-5)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)  # normalize=True solves for unit-norm images
    A, B, C = _sylvester_parts(unit, y, S, lam)
    W = fit_sae(X, y, S, lam=lam).double().numpy().T
    np.testing.assert_allclose(A @ W + W @ B, C, rtol=1e-5, atol=1e-5)


def test_sae_singular_system_gives_minimum_norm_solution() -> None:
    # 2 classes < 5 attributes and 4 images < 6 dimensions: both coefficient matrices are singular, the
    # Sylvester operator too, yet the equation is consistent; the answer is the minimum-norm solution.
    rng = np.random.default_rng(1)
    X, y, S, lam = rng.normal(size=(4, 6)), np.array([0, 1, 0, 1]), rng.normal(size=(2, 5)), 0.5
    A, B, C = _sylvester_parts(X, y, S, lam)
    W = fit_sae(X, y, S, lam=lam, normalize=False).double().numpy().T
    kron = np.kron(np.eye(6), A) + np.kron(B.T, np.eye(5))
    assert np.linalg.matrix_rank(kron) < kron.shape[0]
    least = np.linalg.lstsq(kron, C.flatten("F"), rcond=None)[0].reshape(5, 6, order="F")
    np.testing.assert_allclose(A @ W + W @ B, C, atol=1e-5)
    np.testing.assert_allclose(W, least, atol=1e-5)


def test_sae_system_reuses_one_decomposition() -> None:
    rng = np.random.default_rng(2)
    X, y, S = rng.normal(size=(15, 5)), np.arange(15) % 3, rng.normal(size=(3, 4))
    system = sae_system(X, y, S)
    for lam in (0.05, 1.0, 80.0):
        torch.testing.assert_close(system.solve(lam), fit_sae(X, y, S, lam=lam))


def test_sae_rows_by_hand_and_match_the_cosine_classifiers() -> None:
    # W = [[3, 4, 0], [0, 3, 4]] -> Wn = [[.6, .8, 0], [0, .6, .8]];  S = [[1, 1], [2, 0]]
    # S Wn = [[.6, 1.4, .8], [1.2, 1.6, 0]], row norms sqrt(2.96) and 2;  |s| = sqrt(2) and 2.
    V = torch.tensor([[3.0, 4.0, 0.0], [0.0, 3.0, 4.0]]).T
    S = np.array([[1.0, 1.0], [2.0, 0.0]])
    row0, row1 = torch.tensor([0.6, 1.4, 0.8]), torch.tensor([0.6, 0.8, 0.0])
    torch.testing.assert_close(sae_rows(V, S), torch.stack([row0 / 2.96**0.5, row1]))
    torch.testing.assert_close(sae_rows(V, S, "f2s"), torch.stack([row0 / 2**0.5, row1]))
    # Per image, the rows rank classes as the paper's cosines: F->S cos(Wn x, s_c), S->F cos(x, Wn^T s_c).
    rng = np.random.default_rng(3)
    Vr, Sr = torch.as_tensor(rng.normal(size=(6, 4))), rng.normal(size=(9, 4))
    x = torch.as_tensor(rng.normal(size=(50, 6)))
    Wn = torch.nn.functional.normalize(Vr.T, dim=1)
    Sr_t = torch.as_tensor(Sr)
    f2s = torch.nn.functional.cosine_similarity((x @ Wn.T)[:, None], Sr_t[None], dim=2)
    s2f = torch.nn.functional.cosine_similarity(x[:, None], (Sr_t @ Wn)[None], dim=2)
    assert torch.equal((x.float() @ sae_rows(Vr, Sr, "f2s").T).argmax(1), f2s.argmax(1))
    assert torch.equal((x.float() @ sae_rows(Vr, Sr, "s2f").T).argmax(1), s2f.argmax(1))


def _planted(rng: np.random.Generator, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    """Features linear in the class attributes plus noise: 12 seen classes (15 images each), 4 unseen (10 each).

    Attributes are random, L2-normalised rows (A = 8); x = 3 P s_c + 1 + noise, with a constant offset
    like a ReLU backbone's positive features, P (D = 20, A) Gaussian.
    """
    S_all = rng.normal(size=(16, 8))
    S_all /= np.linalg.norm(S_all, axis=1, keepdims=True)
    P = rng.normal(size=(20, 8))

    def draw(classes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(classes, n)
        return 3 * S_all[y] @ P.T + 1.0 + noise * rng.normal(size=(y.size, 20)), y

    X, y = draw(np.arange(12), 15)
    Xu, yu = draw(np.arange(12, 16), 10)
    return X, y, S_all[:12], S_all[12:], Xu, yu - 12


LAM = {"sae_s2f": 0.2, "sae_f2s": 80.0}  # mvp18's best CUB GZSL values for each reading


@pytest.mark.parametrize("name", ["devise", "ale", "sje", "sae_s2f", "sae_f2s"])
def test_methods_classify_held_out_classes(name: str) -> None:
    X, y, S_seen, S_unseen, Xu, yu = _planted(np.random.default_rng(4))
    if name.startswith("sae"):
        rows = sae_rows(fit_sae(X, y, S_seen, lam=LAM[name]), S_unseen, reading=name[-3:])
    else:
        fit = {"devise": fit_devise, "ale": fit_ale, "sje": fit_sje}[name]
        rows = class_rows(fit(X, y, S_seen, lr=1.0, epochs=20, batch_size=16), S_unseen)
    assert rows.dtype == torch.float32 and rows.shape == (4, 20)
    pred = (torch.as_tensor(Xu).float() @ rows.T).argmax(1).numpy()
    assert mean_per_class_accuracy(yu, pred) >= 0.85  # chance is 0.25; these reach 0.93-1.0


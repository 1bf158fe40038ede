"""Optimise new classifier rows so that their observed neuron importances match predicted ones.

For unseen class u with weight row w_u, the observed importance on image x is
``alpha_obs(x) = pool_ij d(w_u . f(A(x))) / dA_ij = M(x) w_u`` where f is the head (layer ->
penultimate features) and ``M(x)[k, d] = pool_ij d f_d / d A_kij``. The bias never enters.

Two solvers reach the same optimum:

* ``double_backprop`` (the reference): per iteration, backprop through the head to get
  ``alpha_obs`` with ``create_graph=True``, then backprop the loss to ``W_u``.
* ``jacobian``: hold ``M(x)`` for the image pool once (:mod:`niwt.injection.jacobian`: per-image
  ReLU gates for pooling + MLP heads, forward-mode AD otherwise), after which each iteration is
  a few matrix products.

Both cache the pool's activations at the layer once: the trunk is never recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from niwt.importance.capture import Pooling, pool
from niwt.injection.jacobian import (
    DenseJacobian,
    JacobianTooLarge,
    PooledJacobian,
    channel_jacobian,
    head_jacobian,
    plain_attention,
)
from niwt.params import InjectParams

__all__ = ["InjectResult", "PlateauStopper", "Solver", "channel_jacobian", "inject", "niwt_loss",
           "observed_importance", "resolve_solver", "seen_centered_init"]


@dataclass
class InjectResult:
    weight: torch.Tensor  # (U, D)
    iterations: int
    final_loss: float
    history: list[float] = field(default_factory=list)
    solver: str = ""  # what ran: "jacobian (gated)", "jacobian (dense)" or "double_backprop"


class PlateauStopper:
    """NIWT's stopping rule: stop once ``patience`` iterations in a row have not improved the
    last recorded loss by more than ``min_improvement`` (relative). The counter starts at 1 and
    is checked before the current loss updates it, exactly as the original ``alpha2w.py``."""

    def __init__(self, patience: int = 40, min_improvement: float = 0.01) -> None:
        self.patience, self.min_improvement = patience, min_improvement
        self.monitor: float | None = None
        self.counter = 1

    def step(self, loss: float) -> bool:
        """Record ``loss``; return True when optimisation should stop."""
        if self.counter >= self.patience:
            return True
        if self.monitor is None:
            self.monitor = loss
        elif self.monitor != 0 and 1 - loss / self.monitor > self.min_improvement:
            self.counter, self.monitor = 0, loss
        else:
            self.counter += 1
        return False


def seen_centered_init(w_seen: torch.Tensor, n_unseen: int, generator: torch.Generator,
                       mode: str = "seen_centered") -> torch.Tensor:
    """Draw each unseen row per dimension from N(mean, std) of the seen rows (population std)."""
    mu = w_seen.mean(0)
    if mode == "mean":
        return mu.expand(n_unseen, -1).clone()
    sigma = w_seen.std(0, unbiased=False)
    noise = torch.randn(n_unseen, w_seen.shape[1], generator=generator, dtype=w_seen.dtype).to(w_seen.device)
    return mu + sigma * noise


def niwt_loss(alpha_obs: torch.Tensor, alpha_hat: torch.Tensor, w_u: torch.Tensor, mu: torch.Tensor,
              lambda_: float) -> torch.Tensor:
    """``mean(1 - cos(alpha_hat, alpha_obs)) + lambda * 0.5 * ||W_u - mu||^2``."""
    cos = F.cosine_similarity(alpha_obs, alpha_hat, dim=1, eps=1e-12)
    return (1 - cos).mean() + lambda_ * 0.5 * (w_u - mu).pow(2).sum()


def observed_importance(head: nn.Module, acts: torch.Tensor, w_rows: torch.Tensor,
                        pooling: Pooling, create_graph: bool) -> torch.Tensor:
    """Importance of the logit ``w_rows[b] . head(acts[b])`` for each b, by (double) backprop.

    Args:
        acts: (B, C, H, W) cached activations.
        w_rows: (B, D) the weight row whose logit each sample explains.

    Returns:
        (B, C)
    """
    acts = acts.detach().requires_grad_(True)
    with plain_attention():  # a transformer's fused attention kernels have no double backward
        logit = (head(acts) * w_rows).sum()
        (grad,) = torch.autograd.grad(logit, acts, create_graph=create_graph)
    return pool(grad, pooling)


def _optimise(step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w0: torch.Tensor,
              n_pairs: int, cfg: InjectParams, generator: torch.Generator, lr: float) -> InjectResult:
    """Adam on W_u over shuffled minibatches of (pool image, unseen class) pairs."""
    w_u = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w_u], lr=lr)
    stopper = PlateauStopper(cfg.patience, cfg.min_improvement)
    history: list[float] = []
    it = 0
    while it < cfg.max_iters:
        for idx in torch.randperm(n_pairs, generator=generator).split(cfg.batch_size):
            loss = step_loss(w_u, idx)
            opt.zero_grad()
            # only W_u learns: no .grad piles up on the (frozen) head's parameters
            (w_u.grad,) = torch.autograd.grad(loss, [w_u])
            opt.step()
            history.append(loss.item())
            it += 1
            if stopper.step(history[-1]) or it >= cfg.max_iters:
                return InjectResult(w_u.detach(), it, history[-1], history)
    return InjectResult(w_u.detach(), it, history[-1] if history else float("nan"), history)


Solver = Literal["auto", "jacobian", "double_backprop"]


def resolve_solver(head: nn.Module, acts: torch.Tensor, pooling: Pooling,
                   solver: Solver) -> tuple[str, PooledJacobian | None]:
    """The solver to run and its precomputed Jacobian: ``("jacobian", M)`` or ``("double_backprop", None)``.

    ``auto`` takes the Jacobian whenever it fits (always for pooling + MLP heads, whose gated form
    is tiny) and double backprop otherwise; ``jacobian`` raises
    :class:`~niwt.injection.jacobian.JacobianTooLarge` instead of falling back.
    """
    if solver == "double_backprop":
        return solver, None
    if solver not in ("auto", "jacobian"):
        raise ValueError(f"unknown solver {solver!r}; valid: auto, jacobian, double_backprop")
    try:
        return "jacobian", head_jacobian(head, acts, pooling)
    except JacobianTooLarge:
        if solver == "jacobian":
            raise
        return "double_backprop", None


def inject(
    head: nn.Module,
    acts: torch.Tensor,
    alpha_hat: torch.Tensor,
    w_seen: torch.Tensor,
    cfg: InjectParams,
    solver: Solver | None = None,
    jacobian: torch.Tensor | PooledJacobian | None = None,
    *,
    pooling: Pooling,
    seed: int,
    lr: float,
    lambda_: float,
) -> InjectResult:
    """Learn one classifier row per unseen class, all classes in one batched graph.

    Every (pool image, unseen class) pair is a training sample, as NIWT pairs each unseen label
    with random images; minibatches mix classes.

    Args:
        head: layer activations -> penultimate features, in eval mode (frozen).
        acts: (P, C, H, W) cached activations of the image pool.
        alpha_hat: (U, C) predicted importances of the unseen classes.
        w_seen: (S, D) seen classifier rows (init statistics and regulariser target).
        cfg: the ``inject`` params (batch size, stopping rule, init, solver).
        solver: overrides ``cfg.solver``: ``jacobian`` (precomputed products), ``double_backprop``
            (reference), or ``auto`` (the Jacobian when it fits in memory): see :func:`resolve_solver`.
        jacobian: optional precomputed :func:`~niwt.injection.jacobian.head_jacobian` (or a dense
            (P, C, D) tensor from :func:`channel_jacobian`), to share it between calls; it implies
            the ``jacobian`` solver unless ``double_backprop`` is asked for.
        pooling: how the importances were pooled (the mapping's provenance, from extract).
        seed: ``base.seed``.
        lr: Adam's learning rate; lambda_: the pull of each new row to the mean seen row (both
            chosen by ``validate`` among ``inject.lr`` / ``inject.lambda``).
    """
    solver = cfg.solver if solver is None else solver
    gen = torch.Generator().manual_seed(seed)
    n_pool, n_unseen = acts.shape[0], alpha_hat.shape[0]
    w0 = seen_centered_init(w_seen, n_unseen, gen, cfg.init)
    mu = w_seen.mean(0)
    # Pair p is (pool image p % P, unseen class p // P): computed per minibatch, never stored, so
    # memory beyond the shuffled pair order stays O(U x D + P x D) at any number of classes.
    def img_of(idx: torch.Tensor) -> torch.Tensor:
        return idx % n_pool

    def cls_of(idx: torch.Tensor) -> torch.Tensor:
        return torch.div(idx, n_pool, rounding_mode="floor")
    if jacobian is not None and solver != "double_backprop":
        solver, m = "jacobian", DenseJacobian(jacobian) if isinstance(jacobian, torch.Tensor) else jacobian
    else:
        solver, m = resolve_solver(head, acts, pooling, solver)
    if m is not None:

        def step_loss(w_u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            obs = m.apply(img_of(idx), w_u[cls_of(idx)])  # (B, C)
            return niwt_loss(obs, alpha_hat[cls_of(idx)], w_u, mu, lambda_)
    else:

        def step_loss(w_u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            obs = observed_importance(head, acts[img_of(idx)], w_u[cls_of(idx)], pooling, True)
            return niwt_loss(obs, alpha_hat[cls_of(idx)], w_u, mu, lambda_)
    with torch.enable_grad():
        result = _optimise(step_loss, w0, n_pool * n_unseen, cfg, gen, lr)
    result.solver = f"jacobian ({m.kind})" if m is not None else "double_backprop"
    return result

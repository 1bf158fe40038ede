"""Linear map from a class's domain vector (attributes, text embedding) to neuron importances.

Trained as in NIWT's ``mod2alpha``: each pair is (domain vector of image i's class, importance of
image i), the loss is the mean cosine distance, and model selection uses seen classes held out
from training, scored by the rank correlation between each held-out class's predicted importance
and its observed mean (unit-normalised) importance. The paper early-stops on that correlation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MappingConfig:
    epochs: int = 60
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class MappingResult:
    """A fitted map and its selection trace."""

    weight: torch.Tensor  # (C, a)
    bias: torch.Tensor  # (C,)
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    # the map at the selected epoch, fit WITHOUT the held-out classes: used to calibrate GZSL
    # on those classes without any leak of their importances
    heldout_weight: torch.Tensor | None = None
    heldout_bias: torch.Tensor | None = None

    def predict(self, domain: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, a) domain vectors -> (n, C) predicted importances."""
        return predict_importance(self.weight, self.bias, domain)


def predict_importance(weight: torch.Tensor, bias: torch.Tensor, domain: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply a fitted map: (n, a) raw domain vectors -> (n, C) importances."""
    d = torch.as_tensor(np.asarray(domain), dtype=torch.float32)
    return normalize_domain(d) @ weight.T + bias


def normalize_domain(domain: torch.Tensor) -> torch.Tensor:
    """L2-normalise each class vector (as xlsa17's ``att``), so AWA2's 0..100 scale and a unit
    sentence embedding train with the same learning rate."""
    return F.normalize(domain.float(), dim=-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` over rows; (N, C), (N, C) -> scalar."""
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)).mean()


def class_mean_importance(alphas: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-class mean of unit-normalised importances; the cosine target a class is pulled to.

    Returns:
        (len(classes), C)
    """
    unit = F.normalize(alphas, dim=1)
    return torch.stack([unit[labels == c].mean(0) for c in classes.tolist()])


def rank_correlation(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over rows of the Spearman correlation between predicted and observed importances."""
    rhos = [spearmanr(p.numpy(), t.numpy()).statistic for p, t in zip(pred, target, strict=True)]
    return float(np.nanmean(rhos))


def _train(domain: torch.Tensor, labels: torch.Tensor, alphas: torch.Tensor, cfg: MappingConfig,
           epochs: int, on_epoch=None) -> nn.Linear:
    """Adam on minibatches of (class vector, image importance) pairs with the cosine loss."""
    gen = torch.Generator().manual_seed(cfg.seed)
    linear = nn.Linear(domain.shape[1], alphas.shape[1])
    with torch.no_grad():  # NIWT draws from N(0, 1); a small std keeps early cosines informative
        linear.weight.normal_(0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(labels)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            loss = cosine_distance(linear(domain[labels[idx]]), alphas[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, linear)
    return linear


def fit_mapping(
    domain: np.ndarray,
    labels: np.ndarray,
    alphas: np.ndarray,
    val_classes: np.ndarray,
    cfg: MappingConfig,
    selection: str = "rank_corr",
) -> MappingResult:
    """Fit domain -> importance, pick the epoch on held-out seen classes, refit on all.

    Args:
        domain: (n_classes, a) class domain vectors, indexed by ``labels``.
        labels: (N,) class index of each training image.
        alphas: (N, C) importance of each training image.
        val_classes: seen classes held out for model selection (non-empty).
        cfg: optimisation settings.
        selection: ``rank_corr`` (higher is better) or ``val_loss`` (lower is better).

    Returns:
        The map refit on all classes for the selected number of epochs, and the trace.
    """
    dom = normalize_domain(torch.as_tensor(domain))
    lab = torch.as_tensor(labels, dtype=torch.long)
    alp = torch.tensor(np.asarray(alphas), dtype=torch.float32)
    val_c = torch.as_tensor(val_classes, dtype=torch.long)
    is_val = torch.isin(lab, val_c)
    target = class_mean_importance(alp[is_val], lab[is_val], val_c)
    history: list[dict[str, float]] = []
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def score(epoch: int, linear: nn.Linear) -> None:
        with torch.no_grad():
            pred = linear(dom[val_c])
            val_loss = cosine_distance(linear(dom[lab[is_val]]), alp[is_val]).item()
        history.append({"epoch": epoch, "val_loss": val_loss, "val_rank_corr": rank_correlation(pred, target)})
        snapshots[epoch] = (linear.weight.detach().clone(), linear.bias.detach().clone())

    _train(dom, lab[~is_val], alp[~is_val], cfg, cfg.epochs, on_epoch=score)
    if selection == "rank_corr":
        best = max(history, key=lambda h: h["val_rank_corr"])
    else:
        best = min(history, key=lambda h: h["val_loss"])
    epoch = int(best["epoch"])
    final = _train(dom, lab, alp, cfg, epoch)
    return MappingResult(final.weight.detach().clone(), final.bias.detach().clone(), epoch, history,
                         *snapshots[epoch])

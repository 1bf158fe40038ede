"""ICIS: Image-free Classifier Injection with Semantics (Christensen et al., ICCV 2023).

Follows the authors' code (peers.md section 1.1): one autoencoder per modality (class descriptor
``a`` and classifier row with bias ``w``), all four encode/decode pairings, and a cosine loss

    L = d(a<-a, a) + d(a<-w, a)*m + d(w<-w, w)*m + d(w<-a, w)*m,    d = 1 - cos,

where ``m`` is 1 for seen rows and 0 for unseen ones. With ``include_unseen`` ("full" ICIS) unseen
descriptors join every epoch with zero placeholder weights, so they only train attribute
self-reconstruction. Unseen rows are predicted as ``decode_w(encode_a(a_u))``.

Differences from the authors' code: the mask is built from row indices (``>= n_seen``) instead of
"target row is all zeros", so it does not depend on the placeholder values; the defaults (hidden
256, lr 1e-3, 300 epochs) are sized for CPU runs, whereas the paper uses hidden 2048, lr 1e-5 and up
to 1000 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class IcisConfig:
    """ICIS training settings.

    Attributes:
        hidden: latent size of both autoencoders (paper: 2048).
        lr: Adam learning rate (paper scripts: 1e-5, betas (0.9, 0.999)).
        batch_size: classes per batch (paper: 16 for CUB/SUN, 20 for AWA2).
        max_epochs: epoch cap (paper: 1000).
        include_unseen: add unseen descriptors with masked weight terms ("full" ICIS).
        seed: seeds initialisation and batch order, so a fit is reproducible.
        early_stop: apply the slope rule of ``early_stopping_slope``.
        slope_threshold: stop threshold (paper: 2*10e-4 = 0.002 for the cosine loss).
        patience: consecutive below-threshold epochs before stopping (paper: 5).
    """

    hidden: int = 256
    lr: float = 1e-3
    batch_size: int = 16
    max_epochs: int = 300
    include_unseen: bool = True
    seed: int = 0
    early_stop: bool = True
    slope_threshold: float = 2e-3
    patience: int = 5


class IcisModel(nn.Module):
    """Attribute and weight autoencoders sharing a latent space of size ``hidden``."""

    def __init__(self, n_att: int, n_weight: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.enc_a = nn.Sequential(nn.Linear(n_att, hidden), nn.ReLU())
        self.dec_a = nn.Linear(hidden, n_att)
        self.enc_w = nn.Sequential(nn.Linear(n_weight, hidden), nn.ReLU())
        self.dec_w = nn.Linear(hidden, n_weight)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # util.weights_init: N(0, 0.02), zero bias
                nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
                nn.init.zeros_(m.bias)
        self.history: list[float] = []  # mean loss per epoch, filled by fit_icis

    def forward(self, a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (a<-a, a<-w, w<-w, w<-a) for a (B, A) and w (B, D+1)."""
        za, zw = self.enc_a(a), self.enc_w(w)  # (B, h)
        return self.dec_a(za), self.dec_a(zw), self.dec_w(zw), self.dec_w(za)

    def predict(self, a: torch.Tensor) -> torch.Tensor:
        """Weights (B, D+1) predicted from descriptors (B, A)."""
        return self.dec_w(self.enc_a(a))


def _cos_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) cosine distance 1 - cos, eps 1e-8 as in the authors' ``cos_sim_loss``."""
    return 1.0 - nn.functional.cosine_similarity(x, y, dim=1, eps=1e-8)


def icis_loss(model: IcisModel, a: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The four-term ICIS loss on one batch.

    Args:
        model: the joint autoencoder.
        a: (B, A) descriptors.
        w: (B, D+1) target weights (anything for unseen rows; they are masked).
        mask: (B,) 1.0 for seen rows, 0.0 for unseen rows.

    Returns:
        Scalar loss: a<-a is a plain batch mean; the three terms involving weights are
        ``sum(d * m) / max(sum(m), 1)``.
    """
    aa, aw, ww, wa = model(a, w)
    msum = mask.sum().clamp(min=1.0)
    masked = (_cos_dist(aw, a) + _cos_dist(ww, w) + _cos_dist(wa, w)) * mask
    return _cos_dist(aa, a).mean() + masked.sum() / msum


def early_stopping_slope(losses: list[float]) -> float | None:
    """Loss slope used by ICIS's early stopping, or None before epoch index 21.

    ``slope = -(mean(last 10 losses) - mean(previous 10)) / 10``; it is computed once more than 21
    epochs have run (the code's ``epoch > 20``). Training stops after ``patience`` consecutive
    epochs with ``slope < threshold``, i.e. once the loss has stopped falling.
    """
    if len(losses) < 22:
        return None
    return -(float(np.mean(losses[-10:])) - float(np.mean(losses[-20:-10]))) / 10.0


def fit_icis(D_all: np.ndarray, W_seen_with_bias: np.ndarray, n_seen: int, config: IcisConfig) -> IcisModel:
    """Train ICIS on seen classifier rows and all class descriptors.

    Args:
        D_all: (C, A) descriptors; rows 0..n_seen-1 seen, the rest unseen (project order).
        W_seen_with_bias: (S, D+1) seen classifier rows with the bias appended as the last column.
        n_seen: S.
        config: training settings.

    Returns:
        The trained model in eval mode; ``model.history`` holds the per-epoch mean losses.
    """
    if W_seen_with_bias.shape[0] != n_seen:
        raise ValueError(f"{W_seen_with_bias.shape[0]} weight rows for n_seen={n_seen}")
    gen = torch.Generator().manual_seed(config.seed)
    att = torch.as_tensor(np.asarray(D_all), dtype=torch.float32)  # (C, A)
    w = torch.as_tensor(np.asarray(W_seen_with_bias), dtype=torch.float32)  # (S, D+1)
    n_rows = att.shape[0] if config.include_unseen else n_seen
    att = att[:n_rows]
    w = torch.cat([w, w.new_zeros(n_rows - n_seen, w.shape[1])])  # zero placeholders, (n_rows, D+1)
    mask = (torch.arange(n_rows) < n_seen).float()  # (n_rows,)

    model = IcisModel(att.shape[1], w.shape[1], config.hidden, gen)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    below = 0
    for _ in range(config.max_epochs):
        perm = torch.randperm(n_rows, generator=gen)
        total, n_batches = 0.0, 0
        for start in range(0, n_rows, config.batch_size):
            idx = perm[start:start + config.batch_size]
            loss = icis_loss(model, att[idx], w[idx], mask[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n_batches = total + loss.item(), n_batches + 1
        model.history.append(total / n_batches)
        slope = early_stopping_slope(model.history) if config.early_stop else None
        if slope is not None:
            below = below + 1 if slope < config.slope_threshold else 0
            if below == config.patience:
                break
    return model.eval()


def predict_unseen_rows(model: IcisModel, D_unseen: np.ndarray) -> np.ndarray:
    """(U, D+1) predicted unseen classifier rows (weights, then bias) from (U, A) descriptors.

    Norms are whatever the decoder outputs (the cosine loss ignores magnitude); rescale them
    (``regression.rescale_rows``) or calibrate before GZSL if needed.
    """
    with torch.no_grad():
        out = model.predict(torch.as_tensor(np.asarray(D_unseen), dtype=torch.float32))
    return out.numpy().astype(np.float64)

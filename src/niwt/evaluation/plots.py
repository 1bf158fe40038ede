"""PNG plots of the evaluation (DVC's HTML plots need a CDN; PNGs open anywhere and go to MLflow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from niwt.evaluation.metrics import confusion_matrix
from niwt.io.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _plt().close(fig)
    return path


def draw_confusion(path: Path, scores: np.ndarray, y: np.ndarray, names: list[str], n_seen: int,
                   method: str = "niwt") -> Path:
    """Where unseen-test images go (rows: true unseen class; columns: unseen classes + 'any seen')."""
    n = len(names)
    conf = confusion_matrix(y, scores.argmax(1), n)[n_seen:]  # (U, C)
    table = np.concatenate([conf[:, n_seen:], conf[:, :n_seen].sum(1, keepdims=True)], 1).astype(float)
    table /= np.maximum(table.sum(1, keepdims=True), 1)
    labels = [names[c] for c in range(n_seen, n)]
    fig, ax = _plt().subplots(figsize=(max(6, 0.55 * len(labels) + 3), max(4.5, 0.5 * len(labels) + 2.5)),
                              layout="constrained")
    image = ax.imshow(table, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the class's test images")
    ax.set_xticks(range(len(labels) + 1), labels + ["(any seen)"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, j in zip(*np.nonzero(table >= 0.05), strict=True):
        ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if table[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true unseen class")
    fig.suptitle(f"GZSL confusion of unseen-test images ({method})")
    return _save(fig, path, dpi=110)


def draw_seen_unseen_curves(path: Path, metrics: dict, curves: dict) -> Path:
    """Each method's seen-unseen curve over calibrated stacking's gamma, its gamma=0 point marked."""
    fig, ax = _plt().subplots(figsize=(8, 5))
    for method, (_, s_arr, u_arr) in curves.items():
        line, = ax.plot(u_arr, s_arr, label=f"{method} (AUSUC {metrics[method]['ausuc']:.3f})")
        ax.scatter([metrics[method]["U"]], [metrics[method]["S"]], s=18, color=line.get_color())
    ax.set(xlabel="unseen accuracy U", ylabel="seen accuracy S", title="Seen-unseen curve (calibrated stacking)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="dot: gamma = 0")
    fig.tight_layout()
    return _save(fig, path)


def draw_unseen_bars(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    """GZSL accuracy of each unseen class, one bar per method."""
    unseen = list(range(n_seen, len(names)))
    fig, ax = _plt().subplots(figsize=(max(6, 0.6 * len(unseen)) + 2, 4))
    width = 0.8 / max(1, len(per_class))
    for i, (method, accs) in enumerate(per_class.items()):
        ax.bar(np.arange(len(unseen)) + i * width, [accs.get(c, 0.0) for c in unseen], width, label=method)
    ax.set_xticks(np.arange(len(unseen)) + 0.4 - width / 2, [names[c] for c in unseen], rotation=60,
                  ha="right", fontsize=7)
    ax.set(xlabel="unseen class", ylabel="GZSL accuracy", title="Per-class accuracy on unseen classes", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return _save(fig, path)


def draw_history(path: Path, rows: list[dict], panels: dict[str, list[str]], title: str) -> Path:
    """Training curves: one panel per entry of ``panels`` (y label -> columns of ``rows``), x = epoch."""
    fig, axes = _plt().subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    epochs = [int(r["epoch"]) for r in rows]
    for ax, (label, columns) in zip(axes[0], panels.items(), strict=True):
        for col in columns:
            ax.plot(epochs, [float(r[col]) for r in rows], marker="o", markersize=3, label=col)
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)

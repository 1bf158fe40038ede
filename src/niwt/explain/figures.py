"""PNG figures of explanations (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from niwt.explain.gradcam import overlay


@dataclass
class Explained:
    """One explained image, ready to draw."""

    rgb: np.ndarray  # (H, W, 3) in [0, 1]
    cam: np.ndarray  # (H, W) in [0, 1]
    true_name: str | None  # None when unknown (``niwt predict`` on a new image)
    pred_name: str
    prob: float
    pred_unseen: bool
    attributes: list[str]  # textual explanation, best first (may be empty)

    @property
    def correct(self) -> bool | None:
        return None if self.true_name is None else self.true_name == self.pred_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str, unseen: bool) -> str:
    return f"{name} [unseen]" if unseen else name


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text.replace("_", " "), width)) or text


def _colour(e: Explained) -> str:
    return {True: "darkgreen", False: "firebrick", None: "black"}[e.correct]


def draw_single(path: Path, e: Explained, target_name: str | None = None) -> Path:
    """Image | Grad-CAM overlay, with the prediction and its top attributes (``niwt predict``)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 4.2))
    axes[0].imshow(e.rgb)
    axes[0].set_title("image" if e.true_name is None else f"image ({_wrap(e.true_name, 40)})", fontsize=10)
    axes[1].imshow(overlay(e.rgb, e.cam))
    explained = target_name or e.pred_name
    axes[1].set_title(f"Grad-CAM of\n{_wrap(explained, 40)}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    lines = [f"predicted: {_label(e.pred_name, e.pred_unseen)}  (p = {e.prob:.2f})"]
    if e.attributes:
        lead = f"evidence for {target_name}: " if target_name else "because: "
        lines.append(lead + ", ".join(a.replace("_", " ") for a in e.attributes))
    fig.text(0.5, 0.03, "\n".join(lines), ha="center", va="bottom", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.16, wspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def draw_class_panel(path: Path, class_name: str, items: list[Explained]) -> Path:
    """One unseen class: the sampled images (top row) and the Grad-CAM of each prediction (bottom)."""
    plt = _plt()
    n = max(1, len(items))
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 6.0), squeeze=False)
    for j in range(n):
        top, bottom = axes[0, j], axes[1, j]
        top.axis("off")
        bottom.axis("off")
        if j >= len(items):
            continue
        e = items[j]
        top.imshow(e.rgb)
        top.set_title(f"test image {j + 1}", fontsize=10)
        bottom.imshow(overlay(e.rgb, e.cam))
        bottom.set_title("Grad-CAM of the prediction", fontsize=9)
        text = f"pred: {_wrap(_label(e.pred_name, e.pred_unseen), 24)}\np = {e.prob:.2f}"
        if e.attributes:
            text += "\nbecause: " + _wrap(", ".join(e.attributes[:3]), 26)
        bottom.text(0.5, -0.04, text, transform=bottom.transAxes, ha="center", va="top", fontsize=7,
                    color=_colour(e))
    fig.suptitle(f"unseen class: {class_name}  —  Grad-CAM of the predicted class", fontsize=9)
    fig.tight_layout(rect=(0, 0.11, 1, 1), h_pad=1.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def draw_overview(path: Path, panels: dict[str, list[Explained]]) -> Path:
    """All unseen classes at a glance: one row per class, Grad-CAM overlays of its sampled images."""
    plt = _plt()
    n_rows = max(1, len(panels))
    n_cols = max(1, max((len(v) for v in panels.values()), default=1))
    fig, axes = plt.subplots(n_rows, n_cols + 1, figsize=(1.9 * (n_cols + 1) + 1.0, 1.95 * n_rows),
                             squeeze=False, gridspec_kw={"width_ratios": [1.3] + [1] * n_cols})
    for i, (name, items) in enumerate(panels.items()):
        axes[i, 0].axis("off")
        axes[i, 0].text(1.0, 0.5, _wrap(name, 22), ha="right", va="center", fontsize=8,
                        transform=axes[i, 0].transAxes)
        for j in range(n_cols):
            ax = axes[i, j + 1]
            ax.axis("off")
            if j < len(items):
                e = items[j]
                ax.imshow(overlay(e.rgb, e.cam))
                mark = "✓" if e.correct else "✗"
                ax.set_title(f"{mark} {_wrap(e.pred_name, 20)} ({e.prob:.2f})", fontsize=8, color=_colour(e))
    fig.suptitle("Unseen test images: Grad-CAM of the predicted class (green: correct, red: wrong)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.95 * n_rows)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return path


def save_thumbnail(path: Path, e: Explained, size: int = 64) -> None:
    """The Grad-CAM overlay of one explained image as a small PNG (the report's explanation table)."""
    from PIL import Image

    pixels = (overlay(e.rgb, e.cam) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(path)

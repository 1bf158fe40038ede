"""Rank every class (seen and injected unseen) of new images, and explain the prediction.

The core of ``niwt predict`` (:mod:`niwt.commands.predict`): the evaluation transform, the top-k
classes with softmax probabilities and logits, and, when asked, the Grad-CAM overlay of the
predicted (or a chosen) class and the textual explanation: the attributes that the observed
importance of that class on that image maps to through the inverse map (``models/inverse_map.pt``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay inside the functions: ``niwt --help`` must stay fast
    import torch

    from niwt.data.tables import ClassTable
    from niwt.explain.inverse import Attribution
    from niwt.mapping.store import StoredMap
    from niwt.models.networks import NiwtNet

@dataclass(frozen=True)
class Ranked:
    class_id: int
    name: str
    prob: float
    logit: float
    unseen: bool


@dataclass
class Prediction:
    """Ranked classes of one image, and (when asked) its explanation."""

    path: str
    ranked: list[Ranked]
    attribution: Attribution | None = None
    explained: str | None = None  # the class the explanation is about (top-1 unless --target)
    files: list[Path] = field(default_factory=list)

    @property
    def top1(self) -> Ranked:
        return self.ranked[0]


def load_images(paths: Sequence[str | Path], image_size: int) -> torch.Tensor:
    """(N, 3, S, S) images with the evaluation transform of ``evaluate`` (same pixels, same scores)."""
    import numpy as np
    import torch

    from niwt.data.images import ImageTable, make_transform

    table = ImageTable([str(p) for p in paths], np.zeros(len(paths)), make_transform(image_size, train=False))
    return torch.stack([table[i][0] for i in range(len(table))])


def rank(logits: torch.Tensor, class_names: list[str], n_seen: int, k: int) -> list[list[Ranked]]:
    """Top-``k`` classes per row of (N, C) logits, by softmax probability over all C classes."""
    import torch

    probs = torch.softmax(logits.float(), 1)
    k = max(1, min(k, logits.shape[1]))
    top = torch.topk(probs, k, dim=1)  # ties: lowest index first, as argmax
    out = []
    for i in range(len(logits)):
        out.append([Ranked(int(c), class_names[int(c)], float(probs[i, c]), float(logits[i, c]), int(c) >= n_seen)
                    for c in top.indices[i].tolist()])
    return out


def predict_images(model: NiwtNet, meta: dict, paths: Sequence[str | Path], *, top_k: int = 5,
                   explain_dir: Path | None = None, classes: ClassTable | None = None,
                   inverse: StoredMap | None = None, target: str | None = None, n_attributes: int = 5,
                   batch_size: int = 32) -> list[Prediction]:
    """Rank the classes of each image; with ``explain_dir``, write overlays and explanations there.

    Args:
        model, meta: an injected checkpoint (:func:`niwt.models.checkpoint.load_checkpoint`).
        classes: the class table (attribute names and domain vectors) for textual explanations.
        inverse: the inverse map (``models/inverse_map.pt``) for textual explanations.
        target: explain this class (name) instead of each image's top-1.
    """
    import torch

    from niwt.explain.figures import Explained, draw_single
    from niwt.explain.gradcam import gradcam, to_rgb
    from niwt.explain.inverse import top_attributes

    names, n_seen = list(meta.class_names), int(meta.n_seen)
    target_id = None
    if target is not None:
        if target not in names:
            raise ValueError(f"--target {target!r} is not a class of {meta.method or 'the model'}; "
                             f"classes: {', '.join(names[:8])}, ...")
        target_id = names.index(target)
    device = next(model.parameters()).device
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        images = load_images(chunk, meta.image_size).to(device)
        if explain_dir is None:
            with torch.inference_mode():
                logits = model.eval()(images).float().cpu()
            results += [Prediction(str(p), r) for p, r in zip(chunk, rank(logits, names, n_seen, top_k), strict=True)]
            continue
        cam = gradcam(model, meta.layer, images, target_id)
        for i, (path, ranked) in enumerate(zip(chunk, rank(cam.logits, names, n_seen, top_k), strict=True)):
            explained = int(cam.targets[i])
            attribution = None
            if inverse is not None and classes is not None and classes.attribute_names:
                attribution = top_attributes(inverse.weight, inverse.bias, cam.importance[i],
                                             classes.attribute_names, n_attributes, classes.domain[explained])
            pred = Prediction(str(path), ranked, attribution, names[explained])
            stem = f"{start + i:03d}_{Path(path).stem}"
            e = Explained(to_rgb(images[i]), cam.cam[i].numpy(), None, ranked[0].name, ranked[0].prob,
                          ranked[0].unseen, attribution.names if attribution else [])
            png = draw_single(Path(explain_dir) / f"{stem}_gradcam.png", e,
                              target_name=names[explained] if target_id is not None else None)
            txt = Path(explain_dir) / f"{stem}_explanation.json"
            txt.write_text(json.dumps(_explanation(pred, names[explained], inverse is not None), indent=2) + "\n")
            pred.files = [png, txt]
            results.append(pred)
    return results


def _explanation(pred: Prediction, explained: str, have_inverse: bool) -> dict:
    out = {"image": pred.path, "explained_class": explained,
           "ranked": [r.__dict__ for r in pred.ranked]}
    if pred.attribution is not None:
        a = pred.attribution
        out["top_attributes"] = [{"attribute": n, "score": s} for n, s in zip(a.names, a.scores, strict=True)]
        out["cosine_to_class_attributes"] = a.cosine
        out["text"] = f"{explained}: because of " + ", ".join(n.replace("_", " ") for n in a.names)
    elif not have_inverse:
        out["note"] = "no inverse map: run `dvc repro fit_mapping` for textual explanations"
    return out


def format_prediction(pred: Prediction) -> str:
    lines = [pred.path]
    for i, r in enumerate(pred.ranked, start=1):
        mark = "  [unseen]" if r.unseen else ""
        lines.append(f"  {i:>2}. {r.name:<40} p={r.prob:.4f}  logit={r.logit:+.3f}{mark}")
    if pred.attribution is not None:
        lead = "because" if pred.explained in (None, pred.top1.name) else f"evidence for {pred.explained}"
        lines.append(f"      {lead}: " + ", ".join(n.replace("_", " ") for n in pred.attribution.names))
    for f in pred.files:
        lines.append(f"      wrote {f}")
    return "\n".join(lines)

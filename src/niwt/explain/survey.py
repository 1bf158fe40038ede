"""What the ``explain`` stage measures on the test images, apart from how it is shown.

* :func:`explain_images`: Grad-CAM of the predicted class and the textual explanation (grouped
  inverse map) of every unseen-test image, with how the text agrees with the predicted class's
  own attributes (:class:`Agreement`);
* :func:`cam_checks`: Grad-CAM against the object masks on any split (the seen-test images);
* :func:`ground_truth_metrics`: both against what each image really shows (the synthetic default
  records it, :mod:`niwt.data.truth`), for four explanation variants;
* :func:`panel_sample` and :func:`explanation_rows`: the seeded sample the report draws and lists;
* :func:`summary_metrics`: the stage's numbers.

The report (:mod:`niwt.explain.render`) only formats what these return.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from niwt.data.images import make_loader
from niwt.data.tables import ClassTable, SplitTable
from niwt.data.truth import ImageTruth, attribute_hits, object_masks
from niwt.explain.figures import Explained
from niwt.explain.gradcam import gradcam, to_rgb
from niwt.explain.inverse import predict_domain
from niwt.explain.measure import (
    attribute_groups,
    exclusive,
    grouped_order,
    mass_inside,
    pointing_hit,
    precision_at_k,
    rankings,
)
from niwt.mapping.linear import normalize_domain
from niwt.models.checkpoint import CheckpointMeta

VARIANTS = ("paper", "improved", "class_prior", "random")  # the textual explanations compared (measure.rankings)
CAM_KEYS = ("mass_inside", "pointing_hit", "mask_share")


@dataclass(frozen=True)
class CamChecks:
    """Per image, Grad-CAM of the predicted class against the object mask: the heat map's mass on
    the object, whether its maximum is on it, and the object's share of the image (the mass a
    uniform map would put there: the baseline the first two are read against)."""

    mass_inside: np.ndarray
    pointing_hit: np.ndarray
    mask_share: np.ndarray

    @staticmethod
    def concat(parts: list[CamChecks]) -> CamChecks:
        """One :class:`CamChecks` from the checks of consecutive batches."""
        return CamChecks(*(np.concatenate([getattr(p, k) for p in parts]) for k in CAM_KEYS))


@dataclass(frozen=True)
class Agreement:
    """Per unseen-test image: how the textual explanation agrees with the predicted class's own
    domain vector (``cosine``, ``overlap``: share of the top-k attributes shared), whether the
    prediction is right, the inverse map's scores and the predicted class (what the ground-truth
    variants rank), and the Grad-CAM checks (None without per-image truth)."""

    cosine: np.ndarray
    overlap: np.ndarray
    correct: np.ndarray
    scores: np.ndarray  # (N, a) inverse-map output
    predicted: np.ndarray  # (N,) predicted class id
    cam: CamChecks | None = None


def attribute_names(classes: ClassTable) -> list[str]:
    """The domain's dimension names: the attribute names, else ``dim_<i>`` (a domain without names)."""
    return classes.attribute_names or [f"dim_{i}" for i in range(classes.domain.shape[1])]


def cam_on_objects(cam: torch.Tensor, truth: ImageTruth, image_id: np.ndarray) -> CamChecks:
    """The Grad-CAM checks of one batch of heat maps (N, H, W) against the images' object masks."""
    masks = object_masks(truth, truth.rows(image_id), cam.shape[-1])
    heat = cam.numpy()
    return CamChecks(mass_inside(heat, masks), pointing_hit(heat, masks), masks.reshape(len(masks), -1).mean(1))


def explain_images(model: torch.nn.Module, meta: CheckpointMeta, classes: ClassTable, test: SplitTable,
                   weight: torch.Tensor, bias: torch.Tensor, batch_size: int, device: torch.device, top_k: int,
                   progress: bool,
                   truth: ImageTruth | None = None, cache=None) -> tuple[list[Explained], Agreement]:
    """Grad-CAM of the predicted class and the textual explanation of every image of ``test``.

    The listed attributes are the grouped inverse map's (:func:`grouped_order`: one value per
    group, so no explanation contradicts itself); the agreement is measured with the plain top-k
    of the inverse map against the class's top-k, the paper's reading. ``weight``/``bias``: the
    inverse map (importance -> domain vector) at the checkpoint's importance layer.
    """
    from tqdm.auto import tqdm

    dom = normalize_domain(torch.tensor(classes.domain, dtype=torch.float32))
    k = min(top_k, dom.shape[1])
    class_top = torch.topk(dom, k, dim=1).indices
    attr = attribute_names(classes)
    groups = attribute_groups(attr)
    explained: list[Explained] = []
    cosine, overlap, correct, scores, predicted, checks = [], [], [], [], [], []
    loader = make_loader(test.path, test.class_id, meta.image_size, train=False, batch_size=batch_size,
                         cache=cache)
    for images, y, index in tqdm(loader, desc="explain", unit="batch", disable=not progress, leave=False):
        cam = gradcam(model, meta.layer, images.to(device))
        probs = torch.softmax(cam.logits, 1)
        pred_dom = predict_domain(weight, bias, cam.importance)
        top = torch.topk(pred_dom, k, dim=1).indices
        shown = grouped_order(pred_dom.numpy(), groups)[:, :k]
        scores.append(pred_dom.numpy())
        predicted.append(cam.targets.numpy())
        if truth is not None:
            checks.append(cam_on_objects(cam.cam, truth, test.image_id[index.numpy()]))
        for i in range(len(images)):
            c = int(cam.targets[i])
            cosine.append(float(torch.nn.functional.cosine_similarity(pred_dom[i], dom[c], dim=0)))
            overlap.append(len(set(top[i].tolist()) & set(class_top[c].tolist())) / k)
            correct.append(c == int(y[i]))
            rgb = to_rgb(images[i]) if images.ndim == 4 else np.zeros((0, 0, 3))  # features: no pixels
            explained.append(Explained(rgb, cam.cam[i].numpy(), classes.names[int(y[i])],
                                       classes.names[c], float(probs[i, c]), c >= classes.n_seen,
                                       [attr[j] for j in shown[i].tolist()]))
    agreement = Agreement(np.array(cosine), np.array(overlap), np.array(correct),
                          np.concatenate(scores) if scores else np.zeros((0, dom.shape[1])),
                          np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64),
                          CamChecks.concat(checks) if checks else None)
    return explained, agreement


def cam_checks(model: torch.nn.Module, meta: CheckpointMeta, test: SplitTable, truth: ImageTruth, batch_size: int,
               device: torch.device, progress: bool, cache=None) -> CamChecks | None:
    """Grad-CAM of the predicted class on every image of ``test`` against its object mask (None for
    an empty split): on the seen-test images, the baseline the injected unseen classes are read against."""
    from tqdm.auto import tqdm

    if not len(test):
        return None
    checks = []
    loader = make_loader(test.path, test.class_id, meta.image_size, train=False, batch_size=batch_size,
                         cache=cache)
    for images, _, index in tqdm(loader, desc="explain (seen)", unit="batch", disable=not progress, leave=False):
        cam = gradcam(model, meta.layer, images.to(device))
        checks.append(cam_on_objects(cam.cam, truth, test.image_id[index.numpy()]))
    return CamChecks.concat(checks)


def text_metrics(classes: ClassTable, test: SplitTable, truth: ImageTruth, agreement: Agreement,
                 seed: int) -> dict[str, float]:
    """precision@k and the exclusive rate of every variant (:data:`VARIANTS`) on the images of
    ``test``, k = the number of attribute groups the images' truth uses (a perfect explanation
    names one value per group). Empty where the domain is not the attributes the truth names
    (word vectors, or another vocabulary): the ranking then cannot be checked against it."""
    attr = classes.attribute_names or []
    rows = truth.rows(test.image_id)
    known = {a for r in rows for a in truth.attributes[int(r)]}
    if not (attr and known <= set(attr) and len(test)):
        return {}
    groups = attribute_groups(attr)
    k = len(np.unique(groups[[attr.index(a) for a in known]]))
    hits = attribute_hits(truth, rows, attr)
    dom = normalize_domain(torch.tensor(classes.domain, dtype=torch.float32)).numpy()
    out: dict[str, float] = {}
    for name, order in rankings(agreement.scores, dom, agreement.predicted, groups, seed).items():
        out[f"text/{name}/precision_at_k"] = float(precision_at_k(order, hits, k).mean())
        out[f"text/{name}/exclusive_rate"] = float(exclusive(order, groups, k).mean())
    out.update({"text/k": k, "text/n_images": len(test)})
    return out


def cam_metrics(kind: str, checks: CamChecks | None) -> dict[str, float]:
    """The mean of each Grad-CAM check and the number of images, keyed ``gradcam/<kind>/...``."""
    if checks is None:
        return {}
    out: dict[str, float] = {}
    for key in CAM_KEYS:
        values = getattr(checks, key)
        if len(values):
            out[f"gradcam/{kind}/{key}"] = float(np.mean(values))
    out[f"gradcam/{kind}/n_images"] = len(checks.mass_inside)
    return out


def ground_truth_metrics(classes: ClassTable, splits: SplitTable, truth: ImageTruth | None, agreement: Agreement,
                         seen: CamChecks | None, seed: int) -> dict[str, float]:
    """Explanations against ground truth (empty without ``image_attributes.parquet``): the text
    metrics of every variant on the unseen-test images, Grad-CAM on unseen- (``agreement.cam``) and
    seen-test images (``seen``)."""
    if truth is None:
        return {}
    return {**text_metrics(classes, splits.select("test_unseen"), truth, agreement, seed),
            **cam_metrics("unseen", agreement.cam), **cam_metrics("seen", seen)}


def panel_sample(test: SplitTable, classes: ClassTable, n: int, seed: int) -> dict[int, list[int]]:
    """Seeded sample of ``n`` unseen-test images per unseen class (positions in ``test``): the
    same images on every run, so reports of two runs show the same pictures side by side."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(classes.n_seen, len(classes.names)):
        idx = np.flatnonzero(test.class_id == c)
        if len(idx):
            out[c] = sorted(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    return out


def explanation_rows(test: SplitTable, classes: ClassTable, sample: dict[int, list[int]],
                     explained: list[Explained], agreement: Agreement) -> list[dict]:
    """One row per sampled image (``explanations.csv``, the report's table): the prediction, its
    probability, the explanation and its cosine with the predicted class, rounded as shown."""
    rows = []
    for c, idx in sample.items():
        for i in idx:
            x = explained[i]
            rows.append({"image": test.path[i], "class": classes.names[c], "predicted": x.pred_name,
                         "predicted_unseen": x.pred_unseen, "prob": round(x.prob, 4),
                         "top_attributes": ", ".join(x.attributes),
                         "cosine": round(float(agreement.cosine[i]), 4)})
    return rows


def importance_share(values: np.ndarray) -> np.ndarray:
    """Mean absolute value of each neuron in the unit-normalised importance vectors: which neurons
    the importances use, whatever the images' overall gradient scale."""
    unit = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    return np.abs(unit).mean(0)


def summary_metrics(n_neurons: int, agreement: Agreement, top_k: int, sample: dict[int, list[int]],
                    measured: dict[str, float]) -> dict[str, float]:
    """The stage's numbers (``stats/explain.json``): agreement means over all unseen-test images,
    the number of images drawn, and the ground-truth metrics."""
    return {"n_neurons": n_neurons,
            "unseen/attr_cosine": float(agreement.cosine.mean()),
            f"unseen/attr_top{top_k}_overlap": float(agreement.overlap.mean()),
            "unseen/accuracy": float(agreement.correct.mean()),
            "n_panel_images": int(sum(len(v) for v in sample.values())), **measured}

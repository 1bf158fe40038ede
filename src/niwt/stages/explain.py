"""``explain``: why the injected model predicts what it does, visually and in words.

Outputs (in ``out``, written atomically):

* ``neuron_names.parquet`` / ``.csv`` / ``.md``: each neuron of the importance layer named by the
  attributes its column of the inverse map points to;
* ``panels/<class>.png``: for a seeded sample of unseen-test images of every unseen class, the
  image, the prediction of the NIWT model and the Grad-CAM of the predicted class;
  ``panels/unseen_overview.png`` has all classes on one page;
* ``explanations.csv``: per sampled image, the prediction and the attributes that the observed
  importance of the predicted class maps to;
* ``report.md`` and a self-contained ``report.html`` (comparison table and per-class accuracies
  from ``evaluate`` when present, panels, explanations, neuron names).

The inverse map (importance -> domain vector) is an input: ``fit_mapping`` fits it next to the
forward map (``models/inverse_map.pt``). The importance layer is the injected checkpoint's; the
importances and the inverse map must have been made at the same layer and pooling.

Metrics: over all unseen-test images, how well the textual explanation agrees with the predicted
class's own attributes (cosine, top-k overlap). Where the prepared data has per-image ground truth
(``image_attributes.parquet``, the synthetic default), also measured against what each image really
shows (:mod:`niwt.explain.measure`), on all unseen-test images: ``text/<variant>/precision_at_k`` and
``text/<variant>/exclusive_rate`` (k = number of attribute groups) for the paper's inverse map
(``paper``), the grouped inverse map (``improved``: one value per group, the explanation the report
and ``niwt predict`` show), the predicted class's own domain vector (``class_prior``) and a seeded
random ranking (``random``); and Grad-CAM of the predicted class against the object mask:
``gradcam/<unseen|seen>/mass_inside`` and ``.../pointing_hit`` on test_unseen and test_seen images,
with ``.../mask_share`` (the object's share of the image: the mass a uniform map would put inside).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from niwt.data.cache import open_cache
from niwt.data.images import make_loader
from niwt.data.tables import ClassTable, SplitTable, read_classes, read_splits
from niwt.data.truth import IMAGE_TRUTH, ImageTruth, attribute_hits, object_masks, read_image_truth
from niwt.evaluation.report import comparison_rows
from niwt.explain import report as rp
from niwt.explain.figures import Explained, draw_class_panel, draw_overview
from niwt.explain.gradcam import gradcam, to_rgb
from niwt.explain.inverse import neuron_names, predict_domain
from niwt.explain.measure import (
    attribute_groups,
    exclusive,
    grouped_order,
    mass_inside,
    pointing_hit,
    precision_at_k,
    rankings,
)
from niwt.injection.registry import method_checkpoints
from niwt.io.atomic import atomic_path
from niwt.io.parquet import ImportanceFileError, read_importances
from niwt.mapping.linear import normalize_domain
from niwt.mapping.store import StoredMap, check_same_importance, load_map
from niwt.models.checkpoint import check_classes, load_checkpoint
from niwt.models.training import resolve_device
from niwt.params import Params, Runtime
from niwt.stages import StageResult

REPORT_NEURONS = 20  # neurons listed in the report (all are in neuron_names.*)


def explained_checkpoint(injected: Path) -> Path:
    """The model to explain: ``niwt.pt`` when present, else the first method in registry order."""
    return method_checkpoints(Path(injected))[0]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def run(p: Params, rt: Runtime, data: Path, injected: Path, importances: Path, inverse_map: Path, out: Path,
        comparison: Path | None = None, evaluation: Path | None = None,
        pipeline_params: Path | None = None, cache: Path | None = None) -> StageResult:
    """Explain the injected NIWT model; ``comparison``/``evaluation``: evaluate's numbers and plot
    directory, ``pipeline_params``: the params file, shown in the report's provenance."""
    device = resolve_device(rt.device)
    torch.manual_seed(p.base.seed)
    e = p.explain
    classes = read_classes(data / "classes.parquet")
    splits = read_splits(data / "splits.parquet")
    checkpoint = explained_checkpoint(injected)
    model, meta = load_checkpoint(checkpoint, device)
    check_classes(meta, classes.names, checkpoint)
    if len(meta["class_names"]) != len(classes.names) or "layer" not in meta:
        raise ValueError(f"{checkpoint}: {len(meta['class_names'])} outputs, {len(classes.names)} classes in "
                         f"{data}; explain needs an injected (seen + unseen) checkpoint")
    images = open_cache(cache, data / "splits.parquet", meta["image_size"])
    imp = read_importances(importances)
    inverse = load_map(inverse_map, "inverse map", heldout=False)
    check_same_importance(imp.meta, importances, meta, checkpoint)
    check_same_importance(inverse.provenance, inverse_map, meta, checkpoint)
    labels = imp.target_id.astype(np.int64)
    if labels.max() >= classes.n_seen:
        raise ImportanceFileError(f"{importances}: class ids up to {labels.max()} but only "
                                  f"{classes.n_seen} seen classes")
    attr_names = classes.attribute_names or [f"dim_{i}" for i in range(classes.domain.shape[1])]
    if inverse.weight.shape[0] != len(attr_names):
        raise ValueError(f"{inverse_map}: maps to {inverse.weight.shape[0]} dimensions, {data / 'classes.parquet'} "
                         f"has {len(attr_names)}; rerun fit_mapping")

    names = neuron_names(inverse.weight, attr_names)
    unit = imp.values / np.maximum(np.linalg.norm(imp.values, axis=1, keepdims=True), 1e-12)
    share = np.abs(unit).mean(0)
    for row, s in zip(names, share, strict=True):
        row["mean_abs_importance"] = float(s)

    test = splits.select("test_unseen")
    truth = read_image_truth(data / IMAGE_TRUTH)
    batch = rt.inference_batch("features")
    explained, agreement = _explain_unseen(model, meta, classes, test, inverse.weight, inverse.bias,
                                           batch, device, e.top_attributes, rt.progress, truth, images)
    measured = _measure(model, meta, classes, splits, truth, agreement, batch, device, p.base.seed,
                        rt.progress, images)
    sample = _sample(test, classes, e.images_per_class, p.base.seed)

    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _write_neuron_names(tmp, names)
        panels: dict[str, list[Explained]] = {}
        rows = []
        for c, idx in sample.items():
            panels[classes.names[c]] = [explained[i] for i in idx]
            for i in idx:
                x = explained[i]
                rows.append({"image": test.path[i], "class": classes.names[c], "predicted": x.pred_name,
                             "predicted_unseen": x.pred_unseen, "prob": round(x.prob, 4),
                             "top_attributes": ", ".join(x.attributes),
                             "cosine": round(float(agreement["cosine"][i]), 4)})
        _write_csv(tmp / "explanations.csv", rows, list(rows[0]) if rows else ["image"])
        for n, items in panels.items():  # one file per class, for browsing; the report shows the overview
            draw_class_panel(tmp / "panels" / f"{slug(n)}.png", n, items)
        overview = draw_overview(tmp / "panels" / "unseen_overview.png", panels)
        figures = _copy_evaluation_plots(evaluation, tmp / "figures")
        blocks = _report(p, checkpoint, meta, classes, inverse, names, rows, agreement, measured,
                         overview.relative_to(tmp).as_posix(), comparison, evaluation,
                         [f.relative_to(tmp).as_posix() for f in figures], _provenance(pipeline_params, rt))
        (tmp / "report.md").write_text(rp.to_markdown(blocks))
        (tmp / "report.html").write_text(rp.to_html(blocks, tmp, "NIWT explanations"))
        relative = [f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file()]
    k = e.top_attributes
    metrics = {"n_neurons": len(names),
               "unseen/attr_cosine": float(agreement["cosine"].mean()),
               f"unseen/attr_top{k}_overlap": float(agreement["overlap"].mean()),
               "unseen/accuracy": float(agreement["correct"].mean()),
               "n_panel_images": int(sum(len(v) for v in sample.values())), **measured}
    return StageResult(metrics, sorted(out / r for r in relative))


def _explain_unseen(model, meta: dict, classes: ClassTable, test, weight: torch.Tensor, bias: torch.Tensor,
                    batch_size: int, device: torch.device, top_k: int, progress: bool,
                    truth: ImageTruth | None = None, cache=None) -> tuple[list[Explained], dict[str, np.ndarray]]:
    """Grad-CAM of the predicted class and textual explanation of every unseen-test image.

    The listed attributes are the grouped inverse map's (:func:`grouped_order`); ``agreement`` also
    holds each image's inverse-map scores and prediction, and with ``truth`` the Grad-CAM checks.
    """
    from tqdm.auto import tqdm

    dom = normalize_domain(torch.tensor(classes.domain, dtype=torch.float32))
    k = min(top_k, dom.shape[1])
    class_top = torch.topk(dom, k, dim=1).indices
    attr = classes.attribute_names or [f"dim_{i}" for i in range(dom.shape[1])]
    groups = attribute_groups(attr)
    explained: list[Explained] = []
    cosine, overlap, correct, scores, predicted, cam_checks = [], [], [], [], [], []
    loader = make_loader(test.path, test.class_id, meta["image_size"], train=False, batch_size=batch_size,
                         cache=cache)
    for images, y, index in tqdm(loader, desc="explain", unit="batch", disable=not progress, leave=False):
        cam = gradcam(model, meta["layer"], images.to(device))
        probs = torch.softmax(cam.logits, 1)
        pred_dom = predict_domain(weight, bias, cam.importance)
        top = torch.topk(pred_dom, k, dim=1).indices
        shown = grouped_order(pred_dom.numpy(), groups)[:, :k]
        scores.append(pred_dom.numpy())
        predicted.append(cam.targets.numpy())
        if truth is not None:
            cam_checks.append(_cam_on_objects(cam.cam, truth, test.image_id[index.numpy()]))
        for i in range(len(images)):
            c = int(cam.targets[i])
            cosine.append(float(torch.nn.functional.cosine_similarity(pred_dom[i], dom[c], dim=0)))
            overlap.append(len(set(top[i].tolist()) & set(class_top[c].tolist())) / k)
            correct.append(c == int(y[i]))
            explained.append(Explained(to_rgb(images[i]), cam.cam[i].numpy(), classes.names[int(y[i])],
                                       classes.names[c], float(probs[i, c]), c >= classes.n_seen,
                                       [attr[j] for j in shown[i].tolist()]))
    out = {"cosine": np.array(cosine), "overlap": np.array(overlap), "correct": np.array(correct),
           "scores": np.concatenate(scores) if scores else np.zeros((0, dom.shape[1])),
           "predicted": np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64)}
    if cam_checks:
        out["mass_inside"], out["pointing_hit"], out["mask_share"] = (np.concatenate(c)
                                                                      for c in zip(*cam_checks, strict=True))
    return explained, out


def _cam_on_objects(cam: torch.Tensor, truth: ImageTruth,
                    image_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: heat-map mass inside the object, pointing hit, and the object's share of the image."""
    masks = object_masks(truth, truth.rows(image_id), cam.shape[-1])
    heat = cam.numpy()
    return mass_inside(heat, masks), pointing_hit(heat, masks), masks.reshape(len(masks), -1).mean(1)


def _seen_cam_checks(model, meta: dict, test: SplitTable, truth: ImageTruth, batch_size: int,
                     device: torch.device, progress: bool, cache=None) -> dict[str, np.ndarray]:
    """Grad-CAM of the predicted class on the seen-test images, against the object masks."""
    from tqdm.auto import tqdm

    checks = []
    loader = make_loader(test.path, test.class_id, meta["image_size"], train=False, batch_size=batch_size,
                         cache=cache)
    for images, _, index in tqdm(loader, desc="explain (seen)", unit="batch", disable=not progress, leave=False):
        cam = gradcam(model, meta["layer"], images.to(device))
        checks.append(_cam_on_objects(cam.cam, truth, test.image_id[index.numpy()]))
    mass, hit, share = (np.concatenate(c) for c in zip(*checks, strict=True))
    return {"mass_inside": mass, "pointing_hit": hit, "mask_share": share}


VARIANTS = ("paper", "improved", "class_prior", "random")


def _measure(model, meta: dict, classes: ClassTable, splits: SplitTable, truth: ImageTruth | None,
             agreement: dict, batch_size: int, device: torch.device, seed: int, progress: bool,
             cache=None) -> dict:
    """Explanations against ground truth (empty without ``image_attributes.parquet``): the text
    metrics of every variant on the unseen-test images, Grad-CAM on unseen- and seen-test images."""
    if truth is None:
        return {}
    attr = classes.attribute_names or []
    test = splits.select("test_unseen")
    rows = truth.rows(test.image_id)
    out: dict[str, float] = {}
    known = {a for r in rows for a in truth.attributes[int(r)]}
    if attr and known <= set(attr) and len(test):  # text metrics only where the domain is the attributes
        groups = attribute_groups(attr)
        k = len(np.unique(groups[[attr.index(a) for a in known]]))
        hits = attribute_hits(truth, rows, attr)
        dom = normalize_domain(torch.tensor(classes.domain, dtype=torch.float32)).numpy()
        for name, order in rankings(agreement["scores"], dom, agreement["predicted"], groups, seed).items():
            out[f"text/{name}/precision_at_k"] = float(precision_at_k(order, hits, k).mean())
            out[f"text/{name}/exclusive_rate"] = float(exclusive(order, groups, k).mean())
        out.update({"text/k": k, "text/n_images": len(test)})
    seen = splits.select("test_seen")
    for kind, checks in (("unseen", agreement), ("seen", _seen_cam_checks(model, meta, seen, truth, batch_size,
                                                                           device, progress, cache)
                                               if len(seen) else {})):
        for key in ("mass_inside", "pointing_hit", "mask_share"):
            if key in checks and len(checks[key]):
                out[f"gradcam/{kind}/{key}"] = float(np.mean(checks[key]))
        if "mass_inside" in checks:
            out[f"gradcam/{kind}/n_images"] = len(checks["mass_inside"])
    return out


def _sample(test, classes: ClassTable, n: int, seed: int) -> dict[int, list[int]]:
    """Seeded sample of ``n`` unseen-test images per unseen class (positions in ``test``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(classes.n_seen, len(classes.names)):
        idx = np.flatnonzero(test.class_id == c)
        if len(idx):
            out[c] = sorted(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
    return out


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _write_neuron_names(directory: Path, rows: list[dict]) -> None:
    fields = list(rows[0])
    pq.write_table(pa.Table.from_pylist(rows), directory / "neuron_names.parquet")
    _write_csv(directory / "neuron_names.csv", rows, fields)
    blocks = [rp.h1("Neuron names"),
              rp.para("Each neuron of the importance layer, named by the attributes that a unit importance on it "
                      "alone adds most to through the inverse map (importance -> attributes); `against` is "
                      "the attribute it speaks most against; `mean |alpha|` is its mean absolute value in the "
                      "unit-normalised importance vectors of the seen training images."),
              _neuron_table(rows)]
    (directory / "neuron_names.md").write_text(rp.to_markdown(blocks))


def _neuron_table(rows: list[dict]) -> rp.Block:
    ranks = [k.split("_")[1] for k in rows[0] if k.startswith("attribute_")] if rows else []
    header = ["neuron", *[f"attribute {i} (weight)" for i in ranks], "against", "mean |alpha|"]
    body = [[r["neuron"], *[f"{r['attribute_' + i]} ({r['weight_' + i]:+.3f})" for i in ranks],
             f"{r['negative_attribute']} ({r['negative_weight']:+.3f})", f"{r['mean_abs_importance']:.4f}"]
            for r in rows]
    return rp.table(header, body)


def _comparison_block(path: Path | None) -> list[rp.Block]:
    if path is None or not Path(path).is_file():
        return [rp.para("(no `stats/evaluate.json`: run the evaluate stage for the comparison table)")]
    header, rows = comparison_rows(json.loads(Path(path).read_text()))
    return [rp.para("GZSL comparison (%), from `evaluate` (S/U/H: joint label space; cal_*: calibrated stacking "
                    "with the gamma `validate` chose on classes its backbone never saw; heldout_H: H with the "
                    "older gamma chosen on seen classes the network was trained on; best of each column in "
                    "bold)."), rp.table(header, rows)]


def _per_class_blocks(path: Path | None, classes: ClassTable) -> list[rp.Block]:
    if path is None or not Path(path).is_file():
        return [rp.para("(no per-class accuracies: run the evaluate stage)")]
    acc: dict[str, dict[str, str]] = {}
    methods: list[str] = []
    with Path(path).open() as fh:
        for r in csv.DictReader(fh):
            if r["method"] not in methods:
                methods.append(r["method"])
            acc.setdefault(r["class"], {})[r["method"]] = f"{100 * float(r['accuracy']):.1f}"
    out = []
    for kind, names in (("unseen", classes.names[classes.n_seen:]), ("seen", classes.names[:classes.n_seen])):
        rows = [[n, *[acc.get(n, {}).get(mth, "–") for mth in methods]] for n in names]
        out += [rp.para(f"**{kind.capitalize()} classes** (GZSL top-1 %, per method):"),
                rp.table(["class", *methods], rows)]
    return out


EVALUATION_PLOTS = {"seen_unseen_curve.png": "Seen-unseen curve of each method (calibrated stacking over gamma)",
                    "unseen_per_class.png": "GZSL accuracy of each unseen class, per method",
                    "confusion_niwt.png": "Where the unseen-test images go (NIWT)"}


def _copy_evaluation_plots(evaluation: Path | None, target: Path) -> list[Path]:
    """evaluate's PNGs, copied next to the report so it embeds them (and opens on its own)."""
    import shutil

    found = [Path(evaluation) / name for name in EVALUATION_PLOTS] if evaluation else []
    found = [f for f in found if f.is_file()]
    if found:
        target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, target / f.name)) for f in found]


def _provenance(params_file: Path | None, rt: Runtime) -> list[list[str]]:
    """Where the numbers come from: commit, MLflow run, machine, and every pipeline param."""
    import platform

    import yaml

    from niwt.integration import tracking

    rows = [["git commit", tracking.git_commit()], ["MLflow run", tracking.active_run_id() or "(tracking off)"],
            ["machine", f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"],
            ["software", f"python {platform.python_version()}, torch {torch.__version__}"],
            ["device", rt.device]]
    if params_file is not None and Path(params_file).is_file():
        def flat(node, prefix=""):
            for key, value in (node or {}).items():
                if isinstance(value, dict):
                    yield from flat(value, f"{prefix}{key}.")
                else:
                    yield [f"`{prefix}{key}`", str(value)]
        rows += list(flat(yaml.safe_load(Path(params_file).read_text(encoding="utf-8"))))
    return rows


VARIANT_LABELS = {"paper": "inverse map (paper: attributes by predicted value)",
                  "improved": "grouped inverse map (best value per group; shown in this report and `niwt predict`)",
                  "class_prior": "class prior (the predicted class's own domain vector, blind to the image)",
                  "random": "random ranking (seeded)"}


def _measured_blocks(m: dict) -> list[rp.Block]:
    """The ground-truth checks as two small tables (nothing when the data has no per-image truth)."""
    if not m:
        return [rp.h2("Measured against ground truth"),
                rp.para("(no per-image ground truth in the prepared data: only the generated default records "
                        "each image's true attributes and object mask, `image_attributes.parquet`)")]
    b = [rp.h2("Measured against ground truth")]
    if "text/k" in m:
        b += [rp.para(f"Textual explanations of all {m['text/n_images']} unseen-test images against each image's true "
                      f"attribute values (one per group): precision@k of the top k = {m['text/k']} attributes (the "
                      "number of groups), and the share of explanations listing two values of one group among them "
                      "(mutually exclusive)."),
              rp.table(["explanation", f"precision@{m['text/k']}", "exclusive rate"],
                       [[VARIANT_LABELS[v], f"{m[f'text/{v}/precision_at_k']:.3f}",
                         f"{m[f'text/{v}/exclusive_rate']:.3f}"] for v in VARIANTS])]
    rows = [[kind, str(m[f"gradcam/{kind}/n_images"]), f"{m[f'gradcam/{kind}/mass_inside']:.3f}",
             f"{m[f'gradcam/{kind}/pointing_hit']:.3f}", f"{m[f'gradcam/{kind}/mask_share']:.3f}"]
            for kind in ("unseen", "seen") if f"gradcam/{kind}/n_images" in m]
    b += [rp.para("Grad-CAM of the predicted class against the object mask, on unseen-test (NIWT's injected "
                  "classes) and seen-test images (the seen classes of the same network): the share of the heat "
                  "map's mass on the object, the pointing game (is the map's maximum on the object), and the "
                  "object's share of the image (what a uniform map would put on it)."),
          rp.table(["test images", "n", "mass inside object", "pointing hit", "object share"], rows)]
    return b


def _report(p: Params, checkpoint: Path, meta: dict, classes: ClassTable, inverse: StoredMap, names: list[dict],
            rows: list[dict], agreement: dict, measured: dict, overview: str, comparison: Path | None,
            evaluation: Path | None, figures: list[str], provenance: list[list[str]]) -> list[rp.Block]:
    top_k, best = p.explain.top_attributes, inverse.selection
    per_class = Path(evaluation) / "per_class_accuracy.csv" if evaluation else None
    b = [rp.h1("NIWT explanations"),
         rp.para(f"Model `{checkpoint}` ({meta['arch']}, method `{meta.get('method', '?')}`), importance layer "
                 f"`{meta['layer']}` ({meta.get('pooling', 'sum')} pooling); {classes.n_seen} seen + "
                 f"{classes.n_unseen} unseen classes, domain `{classes.domain_kind}` "
                 f"({classes.domain.shape[1]} dimensions). Provenance at the end."),
         rp.h2("Generalized zero-shot results"), *_comparison_block(comparison)]
    b += [rp.image(f, EVALUATION_PLOTS[Path(f).name]) for f in figures]
    b += [*_per_class_blocks(per_class, classes),
          rp.h2("Where the model looks: unseen test images"),
          rp.para(f"{len(rows)} unseen-test images ({p.explain.images_per_class} per unseen class, "
                  "seeded sample). Each overlay is the Grad-CAM of the class the model predicts, at the importance "
                  f"layer `{meta['layer']}`; green titles are correct predictions, red ones wrong. One figure per "
                  "class is in `panels/`."),
          rp.image(overview, "Grad-CAM of the predicted class, all unseen classes")]
    b += _measured_blocks(measured)
    b += [rp.h2("Why: textual explanations"),
          rp.para(f"The observed importance of the predicted class on each image (NIWT's alpha at `{meta['layer']}`) "
                  f"mapped to attributes by the inverse map, one value per attribute group (the grouped inverse "
                  f"map, below); the top {top_k} are listed. `cos` is the cosine between "
                  "that attribute vector and the predicted class's own one. Over all "
                  f"{len(agreement['cosine'])} unseen-test images: mean cos {agreement['cosine'].mean():.3f}, "
                  f"{100 * agreement['overlap'].mean():.1f}% of the top-{top_k} explanation attributes are among "
                  f"the predicted class's top-{top_k}, accuracy {100 * agreement['correct'].mean():.1f}%."),
          rp.table(["class", "image", "predicted", "p", "because", "cos"],
                   [[r["class"], Path(r["image"]).name, r["predicted"] + (" [unseen]" if r["predicted_unseen"] else ""),
                     f"{r['prob']:.2f}", r["top_attributes"], f"{r['cosine']:.2f}"] for r in rows]),
          rp.h2("Inverse map (importance -> attributes)"),
          rp.para(f"Linear, cosine loss, fit like `fit_mapping` the other way round on the extracted importances "
                  f"of the seen training images by `fit_mapping` (`models/inverse_map.pt`); epochs chosen on "
                  f"{len(inverse.provenance.val_classes)} held-out seen classes: best epoch {inverse.best_epoch}, "
                  f"held-out rank correlation {best.get('val_rank_corr', float('nan')):.3f}, held-out cosine "
                  f"distance {best.get('val_loss', float('nan')):.3f}."),
          rp.h2("Neuron names"),
          rp.para(f"The {min(REPORT_NEURONS, len(names))} neurons with the largest mean |alpha|, named by "
                  "the attributes their column of the inverse map points to (all neurons: `neuron_names.csv`, "
                  "`neuron_names.parquet`, `neuron_names.md`)."),
          _neuron_table(sorted(names, key=lambda r: -r["mean_abs_importance"])[:REPORT_NEURONS]),
          rp.h2("Provenance"), rp.table(["what", "value"], provenance)]
    return b

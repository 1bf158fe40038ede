"""``explain``: why the injected model predicts what it does, visually and in words.

Outputs (in ``out``, written atomically):

* ``neuron_names.parquet`` / ``.csv`` / ``.md``: each neuron of the importance layer named by the
  attributes its column of the inverse map points to;
* ``panels/<class>.png``: for a seeded sample of unseen-test images of every unseen class, the
  image, the prediction of the NIWT model and the Grad-CAM of the predicted class;
  ``panels/unseen_overview.png`` has all classes on one page (not for precomputed features, which
  have no pixels: Grad-CAM is not defined there, and the report says so);
* ``explanations.csv``: per sampled image, the prediction and the attributes that the observed
  importance of the predicted class maps to;
* ``report.md`` and a self-contained ``report.html`` (comparison table and per-class accuracies
  from ``evaluate`` when present, panels, explanations, neuron names, provenance).

The inverse map (importance -> domain vector) is an input: ``fit_mapping`` fits it next to the
forward map (``models/inverse_map.pt``). The importance layer is the injected checkpoint's; the
importances and the inverse map must have been made at the same layer and pooling.

What is measured is :mod:`niwt.explain.survey` (the metrics are documented there), how it reads is
:mod:`niwt.explain.render`; this module reads the inputs, calls both and writes the files.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from niwt.data.cache import open_cache
from niwt.data.tables import DOMAIN_FILE, ClassTable, SplitTable, read_classes, read_splits, relative_paths
from niwt.data.truth import IMAGE_TRUTH, ImageTruth, read_image_truth
from niwt.evaluation import outputs
from niwt.evaluation.tables import read_per_class_csv
from niwt.explain import render, survey
from niwt.explain import report as rp
from niwt.explain.figures import Explained, draw_class_panel, draw_overview, save_thumbnail
from niwt.explain.inverse import neuron_names
from niwt.injection.methods import label
from niwt.injection.registry import method_checkpoints
from niwt.io.atomic import atomic_path
from niwt.io.choices import read_choices
from niwt.io.parquet import ImportanceFileError, Importances, read_importances
from niwt.mapping.store import StoredMap, check_same_importance, load_map
from niwt.models.checkpoint import CheckpointMeta, check_classes, load_checkpoint
from niwt.models.networks import takes_features
from niwt.models.training import resolve_device
from niwt.params import Params, Runtime, section_dict
from niwt.stages import StageResult


@dataclass(frozen=True)
class _Inputs:
    """The stage's inputs, read and checked against each other."""

    classes: ClassTable
    splits: SplitTable
    checkpoints: list[Path]  # every injected method in registry order: the first (NIWT when injected) is explained
    model: torch.nn.Module
    meta: CheckpointMeta
    importances: Importances
    inverse: StoredMap
    truth: ImageTruth | None
    images: object  # the decoded-image cache, or None


@dataclass(frozen=True)
class _Measured:
    """What the stage measured (:mod:`niwt.explain.survey`), before any of it is drawn or written."""

    names: list[dict]  # neuron names, with each neuron's mean |alpha|
    explained: list[Explained]  # every unseen-test image, in ``test`` order
    agreement: survey.Agreement
    measured: dict[str, float]  # against ground truth
    sample: dict[int, list[int]]  # unseen class -> positions in ``test`` shown in the report
    rows: list[dict]  # explanations.csv


def run(p: Params, rt: Runtime, data: Path, injected: Path, importances: Path, inverse_map: Path, out: Path,
        comparison: Path | None = None, evaluation: Path | None = None, validation: Path | None = None,
        cache: Path | None = None) -> StageResult:
    """Explain the injected NIWT model. ``comparison``/``evaluation``: evaluate's numbers and plot
    directory, ``validation``: validate's choices; each optional, shown in the report when present."""
    device = resolve_device(rt.device)
    torch.manual_seed(p.base.seed)
    x = _read_inputs(Path(data), Path(injected), Path(importances), Path(inverse_map), device, cache)
    m = _measure(p, rt, x, device)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _write_neuron_names(tmp, m.names)
        # image paths relative to the working directory (the project, or DVC's experiment copy of it): an
        # absolute path would make this DVC-tracked output differ from one checkout to another
        rows = [{**r, "image": relative_paths([r["image"]], Path.cwd())[0]} for r in m.rows]
        _write_csv(tmp / "explanations.csv", rows, list(rows[0]) if rows else ["image"])
        overview = None if takes_features(x.model) else _draw_panels(  # features: no pixels, no Grad-CAM
            tmp / "panels", {x.classes.names[c]: [m.explained[i] for i in idx] for c, idx in m.sample.items()})
        thumbs = None if overview is None else _write_thumbnails(tmp, m)
        report = _report_data(p, x, m, tmp, overview, comparison, evaluation, validation, thumbs)
        blocks = render.report_blocks(report)
        (tmp / "report.md").write_text(rp.to_markdown(blocks))
        (tmp / "report.html").write_text(rp.to_html(blocks, tmp, "NIWT explanations"))
        relative = [f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file()]
    metrics = survey.summary_metrics(len(m.names), m.agreement, p.explain.top_attributes, m.sample, m.measured)
    return StageResult(metrics, sorted(out / r for r in relative))


def _measure(p: Params, rt: Runtime, x: _Inputs, device: torch.device) -> _Measured:
    """Everything the report shows, measured: neuron names, every unseen-test image explained, the
    ground-truth checks (unseen and seen test images) and the seeded sample drawn."""
    classes, test, e = x.classes, x.splits.select("test_unseen"), p.explain
    batch = rt.inference_batch("features")
    names = neuron_names(x.inverse.weight, survey.attribute_names(classes))
    for row, share in zip(names, survey.importance_share(x.importances.values), strict=True):
        row["mean_abs_importance"] = float(share)
    explained, agreement = survey.explain_images(x.model, x.meta, classes, test, x.inverse.weight, x.inverse.bias,
                                                 batch, device, e.top_attributes, rt.progress, x.truth, x.images)
    seen = (survey.cam_checks(x.model, x.meta, x.splits.select("test_seen"), x.truth, batch, device, rt.progress,
                              x.images) if x.truth is not None else None)
    measured = survey.ground_truth_metrics(classes, x.splits, x.truth, agreement, seen, p.base.seed)
    sample = survey.panel_sample(test, classes, e.images_per_class, p.base.seed)
    return _Measured(names, explained, agreement, measured, sample,
                     survey.explanation_rows(test, classes, sample, explained, agreement))


def _write_thumbnails(report: Path, m: _Measured) -> list[str]:
    """``thumbs/NNN.png`` for each row of the explanation table (rows follow the sample, class by class)."""
    thumbs = []
    for i in (i for idx in m.sample.values() for i in idx):
        name = f"thumbs/{len(thumbs):03d}.png"
        save_thumbnail(report / name, m.explained[i])
        thumbs.append(name)
    return thumbs


def _report_data(p: Params, x: _Inputs, m: _Measured, report: Path, overview: Path | None, comparison: Path | None,
                 evaluation: Path | None, validation: Path | None,
                 thumbs: list[str] | None = None) -> render.ReportData:
    """The report's content: the measurements, and evaluate's and validate's files where given
    (evaluate's plots are copied under ``report`` so the report opens on its own)."""
    methods = [c.stem for c in x.checkpoints]
    stats = outputs.read_stats(comparison) if comparison is not None and Path(comparison).is_file() else None
    return render.ReportData(
        x.checkpoints[0], x.meta, x.classes, x.inverse, m.names, m.rows, m.agreement, m.measured,
        None if overview is None else overview.relative_to(report).as_posix(),
        _copy_evaluation_plots(evaluation, report, methods), stats,
        _per_class(evaluation), p.explain.top_attributes, p.explain.images_per_class,
        _provenance(p, x, methods, None if stats is None else list(stats), validation), thumbs)


def _read_inputs(data: Path, injected: Path, importances: Path, inverse_map: Path, device: torch.device,
                 cache: Path | None) -> _Inputs:
    """Read every input and check that they belong together (same classes, same importance layer
    and pooling, an injected checkpoint), so a mismatch fails before any image is explained."""
    classes = read_classes(data / "classes.parquet")
    splits = read_splits(data / "splits.parquet")
    checkpoints = method_checkpoints(injected)
    checkpoint = checkpoints[0]
    model, meta = load_checkpoint(checkpoint, device)
    check_classes(meta, classes.names, checkpoint)
    if len(meta.class_names) != len(classes.names) or meta.layer is None:
        raise ValueError(f"{checkpoint}: {len(meta.class_names)} outputs, {len(classes.names)} classes in "
                         f"{data}; explain needs an injected (seen + unseen) checkpoint")
    images = open_cache(cache, data / "splits.parquet", meta.image_size)
    imp = read_importances(importances)
    inverse = load_map(inverse_map, "inverse map", heldout=False)
    check_same_importance(imp.meta, importances, meta, checkpoint)
    check_same_importance(inverse.provenance, inverse_map, meta, checkpoint)
    labels = imp.target_id.astype(np.int64)
    if labels.max() >= classes.n_seen:
        raise ImportanceFileError(f"{importances}: class ids up to {labels.max()} but only "
                                  f"{classes.n_seen} seen classes")
    dims = len(survey.attribute_names(classes))
    if inverse.weight.shape[0] != dims:
        raise ValueError(f"{inverse_map}: maps to {inverse.weight.shape[0]} dimensions, {data / DOMAIN_FILE} "
                         f"has {dims}; rerun fit_mapping")
    return _Inputs(classes, splits, checkpoints, model, meta, imp, inverse, read_image_truth(data / IMAGE_TRUTH),
                   images)


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _write_neuron_names(directory: Path, rows: list[dict]) -> None:
    """The neuron names three ways: Parquet for code, CSV for spreadsheets, markdown to read."""
    pq.write_table(pa.Table.from_pylist(rows), directory / "neuron_names.parquet")
    _write_csv(directory / "neuron_names.csv", rows, list(rows[0]))
    (directory / "neuron_names.md").write_text(render.neuron_names_markdown(rows))


def _draw_panels(directory: Path, panels: dict[str, list[Explained]]) -> Path:
    """One figure per class (for browsing) and the overview the report shows; returns the overview."""
    for name, items in panels.items():
        draw_class_panel(directory / f"{render.slug(name)}.png", name, items)
    return draw_overview(directory / "unseen_overview.png", panels)


def _copy_evaluation_plots(evaluation: Path | None, report: Path, methods: list[str]) -> list[tuple[str, str]]:
    """evaluate's PNGs, copied next to the report so it embeds them (and opens on its own):
    (path relative to ``report``, caption) of each one present."""
    shown = outputs.confusion_method(methods)
    captions = render.evaluation_captions(shown, label(shown))
    found = [Path(evaluation) / name for name in outputs.plot_files(methods)] if evaluation else []
    found = [f for f in found if f.is_file()]
    if found:
        (report / "figures").mkdir(parents=True, exist_ok=True)
    copied = [Path(shutil.copy(f, report / "figures" / f.name)) for f in found]
    return [(c.relative_to(report).as_posix(), captions[c.name]) for c in copied]


def _per_class(evaluation: Path | None) -> tuple[list[str], dict[str, dict[str, float]]] | None:
    """evaluate's per-class accuracies, or None when it has not run."""
    path = Path(evaluation) / outputs.PER_CLASS_CSV if evaluation else None
    return read_per_class_csv(path) if path is not None and path.is_file() else None


def _provenance(p: Params, x: _Inputs, methods: list[str], evaluated: list[str] | None,
                validation: Path | None) -> list[list[str]]:
    """The report's provenance, from the declared params and the inputs' own records (never the
    machine or the commit: the report is a DVC output and must hash the same everywhere)."""
    params = {"base.seed": p.base.seed, **{f"explain.{k}": v for k, v in section_dict(p.explain).items()}}
    choices = read_choices(validation) if validation is not None and Path(validation).is_file() else None
    return render.provenance_rows(params, x.checkpoints[0], x.meta, methods, x.importances.meta, choices, evaluated)

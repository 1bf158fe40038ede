"""How the ``explain`` report reads: its sections as :mod:`niwt.explain.report` blocks.

Every function here formats numbers it is given (:mod:`niwt.explain.survey` measures them, the
stage reads evaluate's files); none reads a file or runs a model, so the wording and rounding of
the report are tested on hand-made input and a change of text never needs a model.

Provenance lists only what the stage reads (its declared params, the checkpoints' and the
importances' metadata, validate's choices, evaluate's methods): the report directory is a DVC
output, and a machine-dependent line (a commit, a host name, a timing) would change its hash on
every machine. Those live in the stage's MLflow run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niwt.data.tables import ClassTable
from niwt.evaluation import outputs
from niwt.evaluation.report import comparison_rows
from niwt.explain import report as rp
from niwt.explain.measure import attribute_groups
from niwt.explain.survey import VARIANTS, Agreement
from niwt.mapping.store import StoredMap
from niwt.models.checkpoint import CheckpointMeta

REPORT_NEURONS = 20  # neurons listed in the report (all are in neuron_names.*)

VARIANT_LABELS = {"paper": "inverse map (paper: attributes by predicted value)",
                  "improved": "grouped inverse map (best value per group; shown in this report and `niwt predict`)",
                  "class_prior": "class prior (the predicted class's own domain vector, blind to the image)",
                  "random": "random ranking (seeded)"}


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, measured and read by the stage."""

    checkpoint: Path  # the explained model, as the stage was given it
    meta: CheckpointMeta  # its metadata
    classes: ClassTable
    inverse: StoredMap
    names: list[dict]  # neuron names with ``mean_abs_importance`` (survey.importance_share)
    rows: list[dict]  # survey.explanation_rows
    agreement: Agreement
    measured: dict[str, float]  # survey.ground_truth_metrics
    overview: str | None  # the overview figure, relative to the report (None: features, no Grad-CAM)
    figures: list[tuple[str, str]]  # evaluate's plots next to the report: (relative path, caption)
    comparison: dict[str, dict[str, float]] | None  # evaluate's numbers per method
    per_class: tuple[list[str], dict[str, dict[str, float]]] | None  # tables.read_per_class_csv
    top_k: int
    images_per_class: int
    provenance: list[list[str]]  # provenance_rows
    thumbs: list[str] | None = None  # per row of ``rows``: its Grad-CAM thumbnail, relative to the report


def slug(name: str) -> str:
    """A class name as a file name (``panels/<slug>.png``): letters, digits, ``_.-`` only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def evaluation_captions(method: str, label: str) -> dict[str, str]:
    """Caption of each of evaluate's plots the report embeds, by file name; ``method``: the method
    whose confusion matrix evaluate drew (:func:`outputs.confusion_method`), ``label`` its display name."""
    return {outputs.SEEN_UNSEEN_PLOT: "Seen-unseen curve of each method (calibrated stacking over gamma)",
            outputs.UNSEEN_BARS_PLOT: "GZSL accuracy of each unseen class, per method",
            outputs.confusion_plot(method): f"Where the unseen-test images go ({label})"}


def neuron_table(rows: list[dict]) -> rp.Block:
    """Neurons with their best attributes and weights, the attribute they speak against, and their
    share of the importance vectors."""
    ranks = [k.split("_")[1] for k in rows[0] if k.startswith("attribute_")] if rows else []
    header = ["neuron", *[f"attribute {i} (weight)" for i in ranks], "against", "mean |alpha|"]
    body = [[r["neuron"], *[f"{r['attribute_' + i]} ({r['weight_' + i]:+.3f})" for i in ranks],
             f"{r['negative_attribute']} ({r['negative_weight']:+.3f})", f"{r['mean_abs_importance']:.4f}"]
            for r in rows]
    return rp.table(header, body)


def neuron_names_markdown(rows: list[dict]) -> str:
    """``neuron_names.md``: every neuron, with how the names were made."""
    return rp.to_markdown([
        rp.h1("Neuron names"),
        rp.para("Each neuron of the importance layer, named by the attributes that a unit importance on it "
                "alone adds most to through the inverse map (importance -> attributes); `against` is "
                "the attribute it speaks most against; `mean |alpha|` is its mean absolute value in the "
                "unit-normalised importance vectors of the seen training images."),
        neuron_table(rows)])


def comparison_blocks(metrics: dict[str, dict[str, float]] | None) -> list[rp.Block]:
    """evaluate's comparison table, or a note saying how to get it."""
    if metrics is None:
        return [rp.para("(no `stats/evaluate.json`: run the evaluate stage for the comparison table)")]
    header, rows = comparison_rows(metrics)
    return [rp.para("GZSL comparison (%), from `evaluate` (S/U/H: joint label space; cal_*: calibrated stacking "
                    "with the gamma `validate` chose on classes its backbone never saw; heldout_H: H with the "
                    "older gamma chosen on seen classes the network was trained on; best of each column in "
                    "bold)."), rp.table(header, rows)]


def per_class_blocks(per_class: tuple[list[str], dict[str, dict[str, float]]] | None,
                     classes: ClassTable) -> list[rp.Block]:
    """Per-class GZSL accuracy of every method, unseen classes first (where NIWT acts)."""
    if per_class is None:
        return [rp.para("(no per-class accuracies: run the evaluate stage)")]
    methods, acc = per_class
    out = []
    for kind, names in (("unseen", classes.names[classes.n_seen:]), ("seen", classes.names[:classes.n_seen])):
        rows = [[n, *[f"{100 * acc[n][m]:.1f}" if m in acc.get(n, {}) else "–" for m in methods]] for n in names]
        out += [rp.para(f"**{kind.capitalize()} classes** (GZSL top-1 %, per method):"),
                rp.table(["class", *methods], rows)]
    return out


def measured_blocks(m: dict[str, float]) -> list[rp.Block]:
    """The ground-truth checks as two small tables (a note when the data has no per-image truth)."""
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


def _number(value: object) -> str:
    """A provenance value: floats to 4 significant digits (as in the tables), the rest as written."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pairs(items: dict[str, object]) -> str:
    return ", ".join(f"{k} {_number(v)}" for k, v in items.items())


def provenance_rows(params: dict[str, object], checkpoint: Path, meta: CheckpointMeta, methods: list[str],
                    importance_meta: dict[str, str], choices: Any | None,
                    evaluated: list[str] | None) -> list[list[str]]:
    """Where the numbers come from, from the stage's inputs only: its declared params (``params``:
    dotted key -> value), the explained checkpoint and the other injected methods, the importances'
    metadata, validate's choices (a :class:`niwt.io.choices.Choices`, or None when not given) and
    the methods evaluate compared (None without its numbers)."""
    rows = [[f"`{key}`", str(value)] for key, value in params.items()]
    inputs = f"{meta.in_features}-d feature vectors" if meta.in_features else f"{meta.image_size} px images"
    rows.append(["model", f"`{checkpoint}`: {meta.arch}, method `{meta.method or '?'}`, importance layer "
                          f"`{meta.layer}` ({meta.pooling or 'sum'} pooling), {inputs}"])
    if meta.metrics:
        rows.append(["backbone training", _pairs(meta.metrics)])
    rows.append(["injected methods", ", ".join(methods)])
    rows.append(["importances", _pairs(importance_meta)])
    if choices is None:
        rows.append(["validation choices", "(not given)"])
    else:
        rows.append(["validation", f"{len(choices.classes)} classes, class-disjoint backbone: "
                                   f"{'yes' if choices.class_disjoint else 'no'}, map epochs "
                                   f"{choices.mapping_epochs if choices.mapping_epochs is not None else '–'}"])
        for m in [m for m in methods if m in choices.hyper]:
            rows.append([f"choice of `{m}`", _pairs({**choices.hyper[m], "calibration gamma": choices.gamma[m],
                                                    "its seen margin": choices.margin[m],
                                                    "their sd": choices.spread[m]})])
            if choices.separate(m):
                own = choices.calibrated(m)
                rows.append([f"calibrated reading of `{m}`", _pairs({**own.hyper, "calibration gamma": own.gamma,
                                                                     "its seen margin": own.margin,
                                                                     "their sd": own.spread})])
    rows.append(["evaluated methods", ", ".join(evaluated) if evaluated is not None else "(no evaluate numbers)"])
    return rows


def _header_blocks(d: ReportData) -> list[rp.Block]:
    meta, classes = d.meta, d.classes
    return [rp.h1("NIWT explanations"),
            rp.para(f"Model `{d.checkpoint}` ({meta.arch}, method `{meta.method or '?'}`), importance layer "
                    f"`{meta.layer}` ({meta.pooling or 'sum'} pooling); {classes.n_seen} seen + "
                    f"{classes.n_unseen} unseen classes, domain `{classes.domain_kind}` "
                    f"({classes.domain.shape[1]} dimensions). Provenance at the end.")]


def _results_blocks(d: ReportData) -> list[rp.Block]:
    return [rp.h2("Generalized zero-shot results"), *comparison_blocks(d.comparison),
            *[rp.image(src, caption) for src, caption in d.figures], *per_class_blocks(d.per_class, d.classes)]


def _gradcam_blocks(d: ReportData) -> list[rp.Block]:
    if d.overview is None:
        return [rp.h2("Where the model looks"),
                rp.para("Not shown: the network reads precomputed feature vectors (data.name: xlsa17), which have no "
                        "pixels, so Grad-CAM is not defined. The textual explanations below are: they need only the "
                        f"importances at `{d.meta.layer}`.")]
    return [rp.h2("Where the model looks: unseen test images"),
            rp.para(f"{len(d.rows)} unseen-test images ({d.images_per_class} per unseen class, "
                    "seeded sample). Each overlay is the Grad-CAM of the class the model predicts, at the importance "
                    f"layer `{d.meta.layer}`; green titles are correct predictions, red ones wrong. One figure per "
                    "class is in `panels/`."),
            rp.image(d.overview, "Grad-CAM of the predicted class, all unseen classes")]


def _text_blocks(d: ReportData) -> list[rp.Block]:
    a, top_k = d.agreement, d.top_k
    names = d.classes.attribute_names
    grouped = len(set(attribute_groups(names).tolist())) < len(names)  # CUB's has_x::y; AWA2, folders: none
    reading = ("one value per attribute group (the grouped reading, below)" if grouped
               else "ranked by predicted value (these attributes form no groups)")
    return [rp.h2("Why: textual explanations"),
            rp.para(f"The observed importance of the predicted class on each image (NIWT's alpha at "
                    f"`{d.meta.layer}`) mapped to attributes by the inverse map, {reading}; "
                    f"the top {top_k} are listed. `cos` is the cosine between "
                    "that attribute vector and the predicted class's own one. Over all "
                    f"{len(a.cosine)} unseen-test images: mean cos {a.cosine.mean():.3f}, "
                    f"{100 * a.overlap.mean():.1f}% of the top-{top_k} explanation attributes are among "
                    f"the predicted class's top-{top_k}, accuracy {100 * a.correct.mean():.1f}%."),
            # with thumbnails the picture names the image (its file name is its alt text; the path is in
            # explanations.csv), which leaves the width to the explanation itself
            rp.table(["image", "class", "predicted", "p", "because", "cos"],
                     [[f"![{Path(r['image']).name}]({d.thumbs[i]})" if d.thumbs else Path(r["image"]).name,
                       r["class"], r["predicted"] + (" [unseen]" if r["predicted_unseen"] else ""),
                       f"{r['prob']:.2f}", r["top_attributes"], f"{r['cosine']:.2f}"] for i, r in enumerate(d.rows)])]


def _inverse_blocks(d: ReportData) -> list[rp.Block]:
    inverse, best = d.inverse, d.inverse.selection
    return [rp.h2("Inverse map (importance -> attributes)"),
            rp.para(f"Linear, cosine loss, fit like `fit_mapping` the other way round on the extracted importances "
                    f"of the seen training images by `fit_mapping` (`models/inverse_map.pt`); epochs chosen on "
                    f"{len(inverse.provenance.val_classes)} held-out seen classes: best epoch {inverse.best_epoch}, "
                    f"held-out rank correlation {best.get('val_rank_corr', float('nan')):.3f}, held-out cosine "
                    f"distance {best.get('val_loss', float('nan')):.3f}.")]


def _neuron_blocks(d: ReportData) -> list[rp.Block]:
    return [rp.h2("Neuron names"),
            rp.para(f"The {min(REPORT_NEURONS, len(d.names))} neurons with the largest mean |alpha|, named by "
                    "the attributes their column of the inverse map points to (all neurons: `neuron_names.csv`, "
                    "`neuron_names.parquet`, `neuron_names.md`)."),
            neuron_table(sorted(d.names, key=lambda r: -r["mean_abs_importance"])[:REPORT_NEURONS])]


def report_blocks(d: ReportData) -> list[rp.Block]:
    """The whole report, in reading order: results first, then where the model looks and why,
    the maps behind the words, and where it all comes from."""
    return [*_header_blocks(d), *_results_blocks(d), *_gradcam_blocks(d), *measured_blocks(d.measured),
            *_text_blocks(d), *_inverse_blocks(d), *_neuron_blocks(d),
            rp.h2("Provenance"), rp.table(["what", "value"], d.provenance)]

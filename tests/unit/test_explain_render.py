"""The explain report's wording and rounding (niwt.explain.render), exactly, on hand-made numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from niwt.data.tables import ClassTable
from niwt.evaluation import outputs
from niwt.explain import render
from niwt.explain import report as rp
from niwt.explain.survey import Agreement
from niwt.io.choices import Choices, Reading
from niwt.mapping.store import Provenance, StoredMap
from niwt.models.checkpoint import CheckpointMeta

CLASSES = ClassTable(["cat", "dog", "eel"], 2, np.eye(3, dtype=np.float32), "attributes",
                     ["fur_yes", "fur_no", "fins_yes"], ["", "", ""])
NEURONS = [{"neuron": 0, "attribute_1": "fur_yes", "weight_1": 0.5, "attribute_2": "fins_yes", "weight_2": -0.0004,
            "negative_attribute": "fur_no", "negative_weight": -1.25, "mean_abs_importance": 0.123456},
           {"neuron": 1, "attribute_1": "fins_yes", "weight_1": 2.0, "attribute_2": "fur_no", "weight_2": 0.1,
            "negative_attribute": "fur_yes", "negative_weight": -0.5, "mean_abs_importance": 0.5}]


def md(blocks: list[rp.Block]) -> str:
    return rp.to_markdown(blocks)


def test_neuron_table_signs_weights_and_rounds_shares() -> None:
    assert md([render.neuron_table(NEURONS)]) == (
        "| neuron | attribute 1 (weight) | attribute 2 (weight) | against | mean |alpha| |\n"
        "|---|---|---|---|---|\n"
        "| 0 | fur_yes (+0.500) | fins_yes (-0.000) | fur_no (-1.250) | 0.1235 |\n"
        "| 1 | fins_yes (+2.000) | fur_no (+0.100) | fur_yes (-0.500) | 0.5000 |\n").replace(
        "mean |alpha|", "mean \\|alpha\\|")


def test_neuron_names_markdown_is_title_explanation_table() -> None:
    text = render.neuron_names_markdown(NEURONS[:1])
    assert text.startswith("# Neuron names\n\nEach neuron of the importance layer, named by the attributes")
    assert text.endswith("| 0 | fur_yes (+0.500) | fins_yes (-0.000) | fur_no (-1.250) | 0.1235 |\n")


def test_comparison_blocks_percent_bold_best_and_registry_labels() -> None:
    blocks = render.comparison_blocks({"regression": {"S": 0.6, "U": 0.1}, "niwt": {"S": 0.5, "U": 0.25}})
    assert md(blocks[1:]) == ("| method | S | U |\n|---|---|---|\n"
                              "| NIWT | 50.0 | **25.0** |\n| ridge regression | **60.0** | 10.0 |\n")
    assert blocks[0].text.startswith("GZSL comparison (%), from `evaluate`")
    assert md(render.comparison_blocks(None)) == (
        "(no `stats/evaluate.json`: run the evaluate stage for the comparison table)\n")


def test_per_class_blocks_unseen_first_and_dash_where_a_method_lacks_a_class() -> None:
    acc = {"eel": {"niwt": 0.25, "icis": 1.0}, "cat": {"niwt": 0.5}, "dog": {"niwt": 0.0, "icis": 0.125}}
    assert md(render.per_class_blocks((["niwt", "icis"], acc), CLASSES)) == (
        "**Unseen classes** (GZSL top-1 %, per method):\n\n"
        "| class | niwt | icis |\n|---|---|---|\n| eel | 25.0 | 100.0 |\n\n"
        "**Seen classes** (GZSL top-1 %, per method):\n\n"
        "| class | niwt | icis |\n|---|---|---|\n| cat | 50.0 | – |\n| dog | 0.0 | 12.5 |\n")
    assert md(render.per_class_blocks(None, CLASSES)) == "(no per-class accuracies: run the evaluate stage)\n"


MEASURED = {**{f"text/{v}/{m}": x for v, x in (("paper", 0.5), ("improved", 0.75), ("class_prior", 0.6),
                                                ("random", 0.2)) for m in ("precision_at_k", "exclusive_rate")},
            "text/k": 5, "text/n_images": 36,
            "gradcam/unseen/mass_inside": 0.15, "gradcam/unseen/pointing_hit": 0.1388,
            "gradcam/unseen/mask_share": 0.18, "gradcam/unseen/n_images": 36}


def test_measured_blocks_two_tables_seen_row_only_when_measured() -> None:
    blocks = render.measured_blocks(MEASURED)
    assert [b.kind for b in blocks] == ["h2", "p", "table", "p", "table"]
    assert md(blocks[2:3]) == (
        "| explanation | precision@5 | exclusive rate |\n|---|---|---|\n"
        "| inverse map (paper: attributes by predicted value) | 0.500 | 0.500 |\n"
        "| grouped inverse map (best value per group; shown in this report and `niwt predict`) | 0.750 | 0.750 |\n"
        "| class prior (the predicted class's own domain vector, blind to the image) | 0.600 | 0.600 |\n"
        "| random ranking (seeded) | 0.200 | 0.200 |\n")
    assert blocks[1].text.startswith("Textual explanations of all 36 unseen-test images")
    assert md(blocks[4:]) == ("| test images | n | mass inside object | pointing hit | object share |\n"
                              "|---|---|---|---|---|\n| unseen | 36 | 0.150 | 0.139 | 0.180 |\n")
    no_truth = render.measured_blocks({})
    assert [b.kind for b in no_truth] == ["h2", "p"] and "no per-image ground truth" in no_truth[1].text


def test_provenance_rows_come_from_the_inputs_only() -> None:
    choices = Choices(Path("validation.json"), ["cat"], True, {"niwt": {"lambda": 0.001, "lr": 0.01}},
                      {"niwt": 0.12744}, {"niwt": 0.75}, {"niwt": 2.5}, 2,
                      calibrated_choices={"niwt": Reading({"lambda": 0.01, "lr": 0.01}, -1.5, 0.5, 3.0)})
    meta = CheckpointMeta("smallcnn", ("a",), 1, 32, metrics={"val_acc": 0.111111, "epochs_trained": 3},
                          method="niwt", layer="body.block4", pooling="sum")
    rows = render.provenance_rows({"base.seed": 0, "explain.top_attributes": 5}, Path("injected/niwt.pt"), meta,
                                  ["niwt", "regression"], {"layer": "body.block4", "fingerprint": "96b7"}, choices,
                                  ["niwt", "regression"])
    assert rows == [["`base.seed`", "0"], ["`explain.top_attributes`", "5"],
                    ["model", "`injected/niwt.pt`: smallcnn, method `niwt`, importance layer `body.block4` "
                              "(sum pooling), 32 px images"],
                    ["backbone training", "val_acc 0.1111, epochs_trained 3"],
                    ["injected methods", "niwt, regression"],
                    ["importances", "layer body.block4, fingerprint 96b7"],
                    ["validation", "1 classes, class-disjoint backbone: yes, map epochs 2"],
                    ["choice of `niwt`", "lambda 0.001, lr 0.01, calibration gamma 0.1274, its seen margin 0.75, "
                                         "their sd 2.5"],
                    ["calibrated reading of `niwt`", "lambda 0.01, lr 0.01, calibration gamma -1.5, its seen margin "
                                                     "0.5, their sd 3"],
                    ["evaluated methods", "niwt, regression"]]
    bare = render.provenance_rows({}, Path("m.pt"), meta.replace(metrics={}), ["niwt"], {}, None, None)
    assert bare[1:] == [["injected methods", "niwt"], ["importances", ""], ["validation choices", "(not given)"],
                        ["evaluated methods", "(no evaluate numbers)"]]


def test_report_sections_in_reading_order_with_provenance_last() -> None:
    inverse = StoredMap(torch.zeros(3, 2), torch.zeros(3), 4, Provenance("body.block4", "sum", "attributes",
                                                                         np.array([0])),
                        selection={"val_rank_corr": 0.5, "val_loss": 0.25})
    agreement = Agreement(np.array([0.5, 1.0]), np.array([0.4, 0.6]), np.array([True, False]), np.zeros((2, 3)),
                          np.array([2, 0]))
    rows = [{"image": "imgs/eel/1.png", "class": "eel", "predicted": "eel", "predicted_unseen": True, "prob": 0.9,
             "top_attributes": "fins_yes, fur_no", "cosine": 0.5}]
    meta = CheckpointMeta("smallcnn", ("a",), 1, 32, method="niwt", layer="body.block4")
    data = render.ReportData(Path("injected/niwt.pt"), meta,
                             CLASSES, inverse, NEURONS, rows, agreement, {}, "panels/unseen_overview.png",
                             [("figures/seen_unseen_curve.png", "curve")], None, None, 2, 1, [["`base.seed`", "0"]])
    blocks = render.report_blocks(data)
    assert [b.text for b in blocks if b.kind in ("h1", "h2")] == [
        "NIWT explanations", "Generalized zero-shot results", "Where the model looks: unseen test images",
        "Measured against ground truth", "Why: textual explanations", "Inverse map (importance -> attributes)",
        "Neuron names", "Provenance"]
    text = md(blocks)
    assert "| 1.png | eel | eel [unseen] | 0.90 | fins_yes, fur_no | 0.50 |\n" in text  # no thumbnails given
    assert ("Over all 2 unseen-test images: mean cos 0.750, 50.0% of the top-2 explanation attributes are among "
            "the predicted class's top-2, accuracy 50.0%.") in text
    assert "best epoch 4, held-out rank correlation 0.500, held-out cosine distance 0.250." in text
    assert "The 2 neurons with the largest mean |alpha|" in text
    assert text.index("| 1 | fins_yes") < text.index("| 0 | fur_yes")  # by mean |alpha|, largest first
    assert text.endswith("## Provenance\n\n| what | value |\n|---|---|\n| `base.seed` | 0 |\n")
    assert "![curve](figures/seen_unseen_curve.png)" in text


def test_captions_cover_exactly_the_plots_evaluate_writes() -> None:
    for methods in (["niwt", "icis"], ["regression", "eszsl"]):
        shown = outputs.confusion_method(methods)
        assert set(render.evaluation_captions(shown, shown)) == set(outputs.plot_files(methods))
    assert render.evaluation_captions("niwt", "NIWT")["confusion_niwt.png"] == "Where the unseen-test images go (NIWT)"


def test_slug_keeps_file_safe_characters() -> None:
    assert render.slug("Black footed/Albatross (1)") == "Black_footed_Albatross_1"
    assert render.slug("a.b-c_d") == "a.b-c_d" and render.slug("???") == "class"


def test_a_thumbnail_cell_is_embedded_in_html_and_an_image_in_markdown(tmp_path) -> None:
    """A table cell that is exactly ``![alt](file.png)`` is the picture: embedded as a data URI in the
    HTML (the report opens on its own), a markdown image in report.md; any other cell stays text."""
    import base64

    from PIL import Image

    from niwt.explain import report as rp

    (tmp_path / "thumbs").mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "thumbs" / "000.png")
    block = rp.table(["", "class"], [["![Grad-CAM](thumbs/000.png)", "fox"], ["![x](y.png) and text", "owl"]])
    html = rp.to_html([block], tmp_path, "t")
    data = base64.b64encode((tmp_path / "thumbs" / "000.png").read_bytes()).decode("ascii")
    assert f'<img class="thumb" alt="Grad-CAM" src="data:image/png;base64,{data}">' in html
    assert "<td>![x](y.png) and text</td>" in html
    # a name from the user's files shaped like an image cell reads nothing: text
    (tmp_path.parent / "secret.png").write_bytes(b"secret")
    for name in ("![a](../secret.png)", "![a](/etc/hostname.png)", "![a](thumbs/../../secret.png)"):
        page = rp.to_html([rp.table(["class"], [[name]])], tmp_path, "t")
        assert "<img" not in page and "c2VjcmV0" not in page, name
    assert "| ![Grad-CAM](thumbs/000.png) | fox |" in rp.to_markdown([block])

"""The explain stage, ``niwt predict`` and the MLflow registry on a tiny project built by the real stages."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from niwt import cli
from niwt.config.load import load_params
from niwt.config.runtime import load_runtime
from niwt.data.images import make_loader
from niwt.data.tables import read_classes, read_splits
from niwt.evaluation.gzsl import load_methods, score_methods
from niwt.io.atomic import write_json
from niwt.models.checkpoint import load_checkpoint, save_checkpoint
from niwt.models.training import predict
from niwt.stages import evaluate, extract, finetune, finetune_validation, fit_mapping, inject, prepare, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import TINY, merge  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """prepare -> finetune -> validate -> extract -> fit_mapping -> inject (NIWT) -> evaluate, tiny, in a temp dir."""
    root = tmp_path_factory.mktemp("explain_project")
    raw = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY),
                {"finetune": {"epochs": 3}, "inject": {"methods": ["niwt"]}})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(root / "params.yaml")
    rt = load_runtime({"NIWT_DEVICE": "cpu", "NIWT_PROGRESS": "0"})
    data, ckpt, imp, mapping, injected = (root / "data", root / "finetuned.pt", root / "importances",
                                          root / "mapping.pt", root / "injected")
    torch.set_num_threads(1)
    prepare.run(p, rt, data)
    finetune.run(p, rt, data, ckpt, root / "finetune.csv")
    finetune_validation.run(p, rt, data, root / "validation_backbone.pt")
    validate.run(p, rt, data, root / "validation_backbone.pt", root / "validation.json")
    extract.run(p, rt, data, ckpt, imp)
    fit_mapping.run(p, rt, data, imp, root / "validation.json", mapping, root / "inverse_map.pt", root / "mapping.csv")
    inject.run(p, rt, data, ckpt, mapping, root / "validation.json", injected)
    result = evaluate.run(p, rt, data, injected, root / "validation.json", root / "plots", root / "gzsl")
    write_json(root / "evaluate.json", result.metrics)
    return root


@pytest.fixture(scope="module")
def explained(project):
    """``niwt explain`` through the CLI, with MLflow tracking into the temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)  # MLflow artifacts go under the project root (no dvc.yaml: the cwd)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.setenv("NIWT_TRACKING", "on")
        mp.setenv("NIWT_PROGRESS", "0")
        rc = cli.main(["explain", "--params", "params.yaml", "--data", "data", "--injected", "injected",
                       "--importances", "importances", "--inverse-map", "inverse_map.pt",
                       "--out", "reports/explain", "--stats", "explain.json",
                       "--comparison", "evaluate.json", "--evaluation", "plots", "--validation", "validation.json"])
    assert rc == 0
    return project / "reports" / "explain"


def test_explain_stage_outputs(project, explained) -> None:
    import pyarrow.parquet as pq

    classes = read_classes(project / "data" / "classes.parquet")
    unseen = classes.names[classes.n_seen:]
    for name in ("report.md", "report.html", "neuron_names.parquet", "neuron_names.csv",
                 "neuron_names.md", "explanations.csv", "panels/unseen_overview.png"):
        assert (explained / name).is_file(), name
    panels = {p.stem for p in (explained / "panels").glob("*.png")}
    assert panels == set(unseen) | {"unseen_overview"}
    assert (explained / "panels" / f"{unseen[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    channels = 4 * TINY["model"]["width"]
    table = pq.read_table(explained / "neuron_names.parquet").to_pylist()
    assert [r["neuron"] for r in table] == list(range(channels))
    assert all(r["attribute_1"] in classes.attribute_names for r in table)
    inv = torch.load(project / "inverse_map.pt", weights_only=True)
    assert inv["weight"].shape == (len(classes.attribute_names), channels)
    assert inv["attribute_names"] == classes.attribute_names

    md = (explained / "report.md").read_text()
    assert "| NIWT |" in md  # the comparison table from evaluate.json, with the registry's labels
    assert all((explained / "panels" / f"{n}.png").is_file() for n in unseen)
    assert "panels/unseen_overview.png" in md
    page = (explained / "report.html").read_text()
    images = re.findall(r'<img alt=[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and len(set(images)) == 4  # the overview and evaluate's 3 plots, each once
    # and a Grad-CAM thumbnail per row of the explanation table, embedded
    thumbs = re.findall(r'<img class="thumb" alt="[^"]+\.(?:jpg|png)" src="data:image/png;base64,[^"]+"', page)
    assert len(thumbs) == len(list((explained / "thumbs").glob("*.png"))) == md.count("](thumbs/") > 0
    assert "Seen-unseen curve of each method" in page and "Provenance" in page
    # provenance from the stage's own inputs: its declared params and validate's choices, nothing of the machine
    assert "<code>explain.top_attributes</code>" in page and "<code>inject.lambda</code>" not in page
    assert "choice of `niwt` | lambda 0.001" in md and "git commit" not in md and "MLflow run" not in md
    assert not re.search(r"(src|href)=\"https?://", page)
    assert "<td>" + unseen[0] + "</td>" in page  # per-class accuracies

    metrics = json.loads((project / "explain.json").read_text())
    assert 0 <= metrics["unseen/accuracy"] <= 1 and metrics["n_neurons"] == channels
    assert metrics["n_panel_images"] == 4 * len(unseen)
    assert -1 <= metrics["unseen/attr_cosine"] <= 1

    # measured against the generator's ground truth (image_attributes.parquet), both baselines included
    splits = read_splits(project / "data" / "splits.parquet")
    assert metrics["text/k"] == 5 and metrics["text/n_images"] == len(splits.select("test_unseen"))
    for variant in ("paper", "improved", "class_prior", "random"):
        assert 0 <= metrics[f"text/{variant}/precision_at_k"] <= 1
        assert 0 <= metrics[f"text/{variant}/exclusive_rate"] <= 1
    assert metrics["text/improved/exclusive_rate"] == metrics["text/class_prior/exclusive_rate"] == 0
    for kind in ("unseen", "seen"):
        assert metrics[f"gradcam/{kind}/n_images"] == len(splits.select(f"test_{kind}"))
        for key in ("mass_inside", "pointing_hit", "mask_share"):
            assert 0 <= metrics[f"gradcam/{kind}/{key}"] <= 1
    assert "Measured against ground truth" in md and "class prior" in page and "pointing hit" in page
    assert "because" in md and "dim_0" not in md


def test_explain_embeds_every_plot_evaluate_writes(project, explained) -> None:
    """evaluate (writing) and explain (reading) name the plots through niwt.evaluation.outputs: every
    PNG evaluate wrote is in the report, and the per-class table is where explain looks."""
    from niwt.evaluation import outputs

    written = {p.name for p in (project / "plots").glob("*.png")}
    assert written == set(outputs.plot_files(["niwt"]))
    assert {p.name for p in (explained / "figures").iterdir()} == written
    assert (project / "plots" / outputs.PER_CLASS_CSV).is_file()
    assert "| niwt |" in (explained / "report.md").read_text()  # the per-class table's method column


def test_prepare_records_each_images_truth(project) -> None:
    from niwt.data.truth import object_masks, read_image_truth

    classes = read_classes(project / "data" / "classes.parquet")
    splits = read_splits(project / "data" / "splits.parquet")
    truth = read_image_truth(project / "data" / "image_attributes.parquet")
    assert sorted(truth.image_id.tolist()) == sorted(splits.image_id.tolist())
    rows = truth.rows(splits.image_id)
    own = []
    for r, c in zip(rows, splits.class_id, strict=True):  # one true value per group, mostly the class's own
        assert len(truth.attributes[r]) == 5 and set(truth.attributes[r]) <= set(classes.attribute_names)
        own += [classes.domain[c, classes.attribute_names.index(a)] > 50 for a in truth.attributes[r]]
    assert np.mean(own) > 0.9
    masks = object_masks(truth, rows[:4])
    assert masks.shape == (4, 32, 32) and 0.02 < masks.mean() < 0.8
    assert object_masks(truth, rows[:4], 16).shape == (4, 16, 16)


def test_explain_logs_to_mlflow_and_registers_nothing(project, explained) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("niwt")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "explain"]
    assert "explain/unseen/attr_cosine" in run.data.metrics
    assert run.data.params == {"base.seed": "0", "explain.images_per_class": "4",
                               "explain.top_attributes": "5"}  # exactly its declared params
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "panels", "neuron_names.csv"} <= logged  # sub-directories kept
    assert client.search_model_versions("name='niwt-injected'") == []  # registering is `niwt register`


def _evaluate_top1(project: Path, paths: list[str]) -> list[str]:
    """``evaluate``'s prediction: argmax of score_methods on penultimate features."""
    classes = read_classes(project / "data" / "classes.parquet")
    ckpt = project / "injected" / "niwt.pt"
    base, meta = load_checkpoint(ckpt)
    feats, _ = predict(base, make_loader(paths, np.zeros(len(paths)), meta.image_size, train=False,
                                         batch_size=7), torch.device("cpu"), features=True)
    scores = score_methods(load_methods([ckpt], classes.names), feats)["niwt"]
    return [classes.names[i] for i in scores.argmax(1)]


def _images(project: Path, per_split: int = 3) -> list[str]:
    splits = read_splits(project / "data" / "splits.parquet")
    return [p for s in ("test_unseen", "test_seen") for p in splits.select(s).path[:: 7][:per_split]]


def test_predict_top1_equals_evaluate_and_explains(project, explained, capsys) -> None:
    paths = _images(project)
    out = project / "predict_out"
    classes = read_classes(project / "data" / "classes.parquet")
    n = len(classes.names)
    rc = cli.main(["predict", *paths, "--model", str(project / "injected" / "niwt.pt"), "--data",
                   str(project / "data"), "--top-k", str(n), "--explain", str(out),
                   "--inverse-map", str(project / "inverse_map.pt")])
    assert rc == 0
    printed = capsys.readouterr().out
    top1 = re.findall(r"^\s+1\. (\S+)", printed, flags=re.M)
    assert top1 == _evaluate_top1(project, paths)
    ranks = re.findall(r"^\s+\d+\. (\S+) .*$", printed, flags=re.M)
    assert len(ranks) == n * len(paths)  # every class ranked; exactly the unseen ones marked
    assert printed.count("[unseen]") == classes.n_unseen * len(paths)
    marked = re.findall(r"^\s+\d+\. (\S+) .*\[unseen\]$", printed, flags=re.M)
    assert set(marked) == set(classes.names[classes.n_seen:])
    for i, path in enumerate(paths):
        stem = f"{i:03d}_{Path(path).stem}"
        assert (out / f"{stem}_gradcam.png").read_bytes()[:4] == b"\x89PNG"
        info = json.loads((out / f"{stem}_explanation.json").read_text())
        assert info["explained_class"] == top1[i] == info["ranked"][0]["name"]
        assert info["ranked"][0]["unseen"] == (classes.names.index(top1[i]) >= classes.n_seen)
        probs = [r["prob"] for r in info["ranked"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert len(info["top_attributes"]) == 5
        assert {a["attribute"] for a in info["top_attributes"]} <= set(classes.attribute_names)


def test_predict_any_target_class_and_errors(project, capsys, tmp_path) -> None:
    classes = read_classes(project / "data" / "classes.parquet")
    unseen = classes.names[-1]
    seen_image = read_splits(project / "data" / "splits.parquet").select("test_seen").path[0]
    rc = cli.main(["predict", seen_image, "--model", str(project / "injected" / "niwt.pt"), "--data",
                   str(project / "data"), "--explain", str(tmp_path), "--target", unseen,
                   "--inverse-map", str(tmp_path / "missing.pt")])
    assert rc == 0
    info = json.loads(next(tmp_path.glob("*_explanation.json")).read_text())
    assert info["explained_class"] == unseen and "note" in info  # no inverse map: no attributes
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "nope.jpg"), "--model", str(project / "injected" / "niwt.pt"),
                     "--data", str(project / "data")]) == 2
    assert "error" in capsys.readouterr().err
    fake = tmp_path / "fake.jpg"  # the user's own file that is no image: not blamed on prepare
    fake.write_text("not an image")
    assert cli.main(["predict", str(fake), "--model", str(project / "injected" / "niwt.pt"),
                     "--data", str(project / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"niwt predict: error: {fake}: cannot read image (") and "prepare" not in err, err


def test_registry_round_trip(project, explained, monkeypatch, capsys) -> None:
    """``niwt register`` (a run of its own), in the temp project's SQLite store (shared with
    ``explained``: creating a store costs seconds)."""
    import mlflow
    import pandas as pd

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.setenv("NIWT_TRACKING", "on")
    ckpt = project / "injected" / "niwt.pt"
    assert cli.main(["register", "--model", str(ckpt), "--name", "niwt-roundtrip"]) == 0
    printed = capsys.readouterr()
    assert "models:/niwt-roundtrip/1 (models:/niwt-roundtrip@champion)" in printed.out
    # quiet: none of MLflow's notes about niwt's own design (type hints, input example), no download bars
    assert "Add type hints" not in printed.err and "input example" not in printed.err, printed.err
    assert "Downloading artifacts" not in printed.err, printed.err
    loaded = mlflow.pyfunc.load_model("models:/niwt-roundtrip@champion")
    assert loaded.metadata.get_input_schema().input_names() == ["image"]

    paths = _images(project)
    got = loaded.predict(pd.DataFrame({"image": [_b64(p) for p in paths]}))
    model, meta = load_checkpoint(ckpt)
    from niwt.explain.predict import load_images

    images = load_images(paths, meta.image_size)
    with torch.no_grad():
        probs = torch.softmax(model(images), 1)
    assert got["class"].tolist() == [meta.class_names[i] for i in probs.argmax(1)]
    assert got["class"].tolist() == _evaluate_top1(project, paths)
    np.testing.assert_allclose(got["score"].to_numpy(), probs.max(1).values.numpy(), rtol=1e-5)
    assert got["unseen"].tolist() == [i >= meta.n_seen for i in probs.argmax(1).tolist()]
    raw = loaded.unwrap_python_model().predict(None, images.numpy())  # the tensor input
    pd.testing.assert_frame_equal(raw, got)
    classes = json.loads(Path(mlflow.artifacts.download_artifacts("models:/niwt-roundtrip/1/artifacts/classes.json"))
                         .read_text())
    assert [c["name"] for c in classes["classes"]] == list(meta.class_names)
    # a path is never opened: an existing image's path in place of its bytes is refused
    with pytest.raises(ValueError, match="base64-encoded image bytes.*file paths are never read"):
        loaded.unwrap_python_model().predict(None, pd.DataFrame({"image": [paths[0]]}))
    with pytest.raises(ValueError, match="'image' column"):
        loaded.unwrap_python_model().predict(None, pd.DataFrame({"path": [paths[0]]}))
    # the model carries its code and needs nothing that is not on a package index
    local = Path(mlflow.artifacts.download_artifacts("models:/niwt-roundtrip@champion"))
    assert (local / "code" / "niwt" / "models" / "checkpoint.py").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.split("=")[0] == "niwt"]
    assert any(r.startswith("torch==") for r in requirements)
    # the same weights again (a rerun that changed no weight) register nothing; new weights do
    copy = project / "niwt_copy.pt"
    save_checkpoint(copy, model, meta.replace(metrics={**meta.metrics, "rerun": 1.0}))  # other metadata
    capsys.readouterr()
    assert cli.main(["register", "--model", str(copy), "--name", "niwt-roundtrip"]) == 0
    assert "has the weights of models:/niwt-roundtrip/1 (models:/niwt-roundtrip@champion): no new version" \
        in capsys.readouterr().out
    client = mlflow.MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name = 'niwt-roundtrip'")] == ["1"]
    with torch.no_grad():
        model.classifier.weight[-1, 0] += 1e-3
    save_checkpoint(copy, model, meta)
    assert cli.main(["register", "--model", str(copy), "--name", "niwt-roundtrip"]) == 0
    assert "registered" in capsys.readouterr().out
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'niwt-roundtrip'")) == ["1", "2"]
    assert str(client.get_model_version_by_alias("niwt-roundtrip", "champion").version) == "2"


def _b64(path: str) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.mark.slow
def test_mlflow_models_serve_takes_image_bytes_never_paths(project, explained, tmp_path) -> None:
    """`mlflow models serve` on 127.0.0.1: an image sent as bytes is classified as `niwt predict` does;
    a request naming a file on the server is refused without reading it."""
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "NIWT_TRACKING": "on",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}  # uvicorn
    name = "niwt-serve"
    subprocess.run([sys.executable, "-m", "niwt.cli", "register", "--model", str(project / "injected" / "niwt.pt"),
                    "--name", name, "--params", str(project / "params.yaml")], cwd=project, env=env, check=True,
                   capture_output=True, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(1)

        def post(payload: dict) -> tuple[int, dict]:
            req = urllib.request.Request(f"{url}/invocations", json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read() or b"{}")

        paths = _images(project, per_split=1)
        code, body = post({"dataframe_split": {"columns": ["image"], "data": [[_b64(p)] for p in paths]}})
        assert code == 200, body
        assert [r["class"] for r in body["predictions"]] == _evaluate_top1(project, paths)
        for payload, reason in (({"dataframe_split": {"columns": ["image"], "data": [[paths[0]]]}},
                                 "row 0: 'image' must be base64-encoded image bytes"),
                                ({"dataframe_split": {"columns": ["path"], "data": [[paths[0]]]}},
                                 "Model is missing inputs ['image']")):  # MLflow's schema check, before niwt
            code, body = post(payload)
            assert code == 400 and "predictions" not in body, body
            assert reason in body["message"] and "stack_trace" not in body, body  # niwt's line, no traceback
        assert not (tmp_path / "mlflow.db").exists()  # serving elsewhere creates no tracking store
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


def test_explain_refuses_artifacts_made_at_another_layer(project, tmp_path, monkeypatch, capsys) -> None:
    """The importance layer has one owner (extract); where two artifacts meet, a disagreement is an error."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("NIWT_TRACKING", "off")
    inverse = torch.load(project / "inverse_map.pt", weights_only=True)
    torch.save({**inverse, "layer": "body.block3"}, tmp_path / "inverse_map.pt")
    capsys.readouterr()
    rc = cli.main(["explain", "--params", "params.yaml", "--data", "data", "--injected", "injected",
                   "--importances", "importances", "--inverse-map", str(tmp_path / "inverse_map.pt"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "inverse_map.pt was made with importance layer 'body.block3'" in err, err
    assert "injected/niwt.pt with 'body.block4'" in err and not (tmp_path / "out").exists()


def test_a_stage_cannot_read_params_it_does_not_declare(project) -> None:
    """The CLI hands a stage only its declared params (dvc.yaml `params:`), so no read goes stale."""
    from niwt.config.view import declared_view

    p = declared_view(load_params(project / "params.yaml"), "explain", ("explain",))
    assert p.explain == load_params(project / "params.yaml").explain
    with pytest.raises(AttributeError, match=r"stage 'explain' reads base\.seed but does not declare it"):
        _ = p.base.seed
    q = declared_view(load_params(project / "params.yaml"), "extract", ("base.seed", "extract"))
    assert q.base.seed == 0 and q.extract.layer == "auto"
    with pytest.raises(AttributeError, match="inject.lr"):
        _ = q.inject.lr


def test_injected_checkpoint_keeps_seen_rows_and_records_the_importance(project) -> None:
    """Seen rows bit-identical to the finetuned ones; the layer and pooling come from the mapping."""
    base, _ = load_checkpoint(project / "finetuned.pt")
    injected, meta = load_checkpoint(project / "injected" / "niwt.pt")
    n_seen = base.classifier.out_features
    assert torch.equal(injected.classifier.weight[:n_seen], base.classifier.weight)
    assert torch.equal(injected.classifier.bias[:n_seen], base.classifier.bias)
    assert (meta.layer, meta.pooling) == ("body.block4", "sum")
    assert "layer" not in torch.load(project / "finetuned.pt", weights_only=True)  # extract owns the layer


def test_niwts_calibrated_reading_comes_from_its_own_setting(project, tmp_path) -> None:
    """Given a calibrated choice of its own (another lr of NIWT's grid), ``inject`` keeps the network as
    shipped and carries that reading's rows in the checkpoint; ``evaluate`` reads S, U, H from the
    network and cal_* from those rows, with their own gamma and margin, and names both settings; a
    checkpoint injected from other choices is refused before any feature is computed."""
    from niwt.evaluation.gzsl import calibrated, transfer_gamma
    from niwt.models.networks import ModelError

    p = load_params(project / "params.yaml")
    rt = load_runtime({"NIWT_DEVICE": "cpu", "NIWT_PROGRESS": "0"})
    doc = json.loads((project / "validation.json").read_text())
    chosen = doc["choices"]["niwt"]
    other = next(r for r in doc["grid"] if r["method"] == "niwt" and r["setting"]["lr"] != chosen["lr"])
    own = {**other["setting"], **{k: other[k] for k in ("calibration_gamma", "calibration_margin",
                                                         "calibration_margin_sd")}}
    assert {k: v for k, v in own.items() if k.startswith("mapping_")} == \
        {k: v for k, v in chosen.items() if k.startswith("mapping_")}  # the tiny grid shares one map
    write_json(tmp_path / "validation.json", {**doc, "calibrated_choices": {"niwt": own}})
    injected = tmp_path / "injected"
    result = inject.run(p, rt, project / "data", project / "finetuned.pt", project / "mapping.pt",
                        tmp_path / "validation.json", injected)
    assert {k: v for k, v in result.metrics.items() if k.startswith("niwt/calibrated_")} == \
        {f"niwt/calibrated_{k}": v for k, v in other["setting"].items()}
    shipped, _ = load_checkpoint(project / "injected" / "niwt.pt")
    model, meta = load_checkpoint(injected / "niwt.pt")
    assert torch.equal(model.classifier.weight, shipped.classifier.weight)  # the network: as shipped
    rows = meta.calibrated_rows
    assert rows["setting"] == other["setting"]
    n_seen = meta.n_seen
    assert torch.equal(rows["weight"][:n_seen], shipped.classifier.weight[:n_seen])  # NIWT keeps the seen rows
    assert not torch.equal(rows["weight"][n_seen:], shipped.classifier.weight[n_seen:])
    assert rows["calibration_weight"].shape == meta.calibration["weight"].shape  # its held-out-seen problem too
    assert not torch.equal(rows["calibration_weight"], meta.calibration["weight"])

    result = evaluate.run(p, rt, project / "data", injected, tmp_path / "validation.json", tmp_path / "plots",
                          tmp_path / "gzsl")
    before = json.loads((project / "evaluate.json").read_text())["niwt"]
    m = result.metrics["niwt"]
    assert {k: m[k] for k in ("S", "U", "H", "ausuc")} == {k: before[k] for k in ("S", "U", "H", "ausuc")}
    splits = read_splits(project / "data" / "splits.parquet")
    feats = {}
    for name, table in (("test", splits.select("test_seen", "test_unseen")), ("val", splits.select("val"))):
        loader = make_loader(table.path, table.class_id, meta.image_size, train=False, batch_size=64)
        feats[name] = predict(model, loader, torch.device("cpu"), features=True)
    scores = {k: (torch.as_tensor(f) @ rows["weight"].T + rows["bias"]).numpy() for k, (f, _) in feats.items()}
    gamma = transfer_gamma(own["calibration_gamma"], own["calibration_margin"], own["calibration_margin_sd"],
                           scores["val"], n_seen)
    want = calibrated(scores["test"], feats["test"][1], n_seen, gamma)
    assert m["gamma"] == pytest.approx(gamma) and m["gamma_validation"] == own["calibration_gamma"]
    assert m["cal_H"] == pytest.approx(want["cal_H"], abs=1e-6) and m["cal_S"] == pytest.approx(want["cal_S"], abs=1e-6)
    def text(setting: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in setting.items() if not k.startswith("calibration_"))

    table = (tmp_path / "plots" / "comparison.md").read_text()
    assert f"| NIWT | {text(chosen)} | {text(own)} |" in table.splitlines()

    write_json(tmp_path / "plain.json", {k: v for k, v in doc.items() if k != "calibrated_choices"})
    with pytest.raises(ModelError, match=r"niwt\.pt: its calibrated reading was built under the setting \{.*\}, but "
                                         r".*plain\.json chose its setting as shipped \(no calibrated choice of its "
                                         r"own\) for it; rerun inject"):
        evaluate.run(p, rt, project / "data", injected, tmp_path / "plain.json", tmp_path / "plots2",
                     tmp_path / "gzsl2")
    third = {**own, "lambda": own["lambda"] * 10}  # rows built under another calibrated setting
    write_json(tmp_path / "third.json", {**doc, "calibrated_choices": {"niwt": third}})
    with pytest.raises(ModelError, match=r"built under the setting .*'lambda': 0\.001.*, but .*third\.json chose the "
                                         r"setting .*'lambda': 0\.01.* for it; rerun inject"):
        evaluate.run(p, rt, project / "data", injected, tmp_path / "third.json", tmp_path / "plots2",
                     tmp_path / "gzsl2")
    assert not (tmp_path / "plots2").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_in_a_real_browser(explained, tmp_path) -> None:
    """Headless Chromium renders the report: nothing wider than the window, a bounded page (each
    image once), every embedded figure drawn."""
    sys.path.insert(0, str(REPO / "scripts"))
    from screenshot_report import screenshot

    png = tmp_path / "report.png"
    height = screenshot(explained / "report.html", png, width=1200)
    page = np.asarray(Image.open(png).convert("L"))
    assert 2000 < height < 8000, height
    assert (page[:, 1180:] > 250).all()  # no overflow to the right edge
    assert (page < 100).sum() > 50_000  # text and figures were drawn


def test_predict_top_k_beyond_the_classes_says_so(project, capsys) -> None:
    n = len(read_classes(project / "data" / "classes.parquet").names)
    path = _images(project, 1)[0]
    model = str(project / "injected" / "niwt.pt")
    data = str(project / "data")  # this project's classes, not those of a data/prepared in the working directory
    assert cli.main(["predict", path, "--model", model, "--data", data, "--top-k", "100000"]) == 0
    out = capsys.readouterr()
    assert f"--top-k 100000: the classifier has {n} classes; listing all {n}" in out.err
    assert len(re.findall(r"^\s+\d+\. \S+", out.out, flags=re.M)) == n
    assert cli.main(["predict", path, "--model", model, "--data", data, "--top-k", "0"]) == 2
    assert "--top-k must be at least 1, got 0" in capsys.readouterr().err

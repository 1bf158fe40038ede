"""Smoke test of the hand-run benchmarks: each script runs with ``--quick`` and prints its ratios.

Timings are never asserted (the numbers depend on the machine and its load); only that every
script still runs against the current API and reports its headline ``RATIO`` lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

EXPECTED = {
    "bench_extract.py": ["extract_vs_fwd_bwd", "batched_speedup", "max_abs_diff_batched_vs_per_image"],
    "bench_inject.py": ["per_iter_speedup_double_backprop", "per_iter_speedup_jacobian", "best_speedup"],
    "bench_memory.py": ["peak_rss_large_vs_small", "time_large_vs_small", "cpu_time_per_image_large_vs_small"],
    "bench_inject_scaling.py": ["time_per_iter_largest_vs_smallest_U", "time_per_iter_largest_vs_smallest_P",
                                "dense_bf16_bytes_ratio", "dense_bf16_relative_dW"],
    "bench_cache.py": ["read_speedup_cache_vs_jpeg", "loader_share_cache"],
    "bench_pipeline.py": ["pipeline_time_cache_vs_files", "stages_slower_with_cache"],
    "bench_families.py": ["max_weight_row_cosine_of_defaults", "degenerate_defaults"],
}
# Extra arguments that keep a smoke run short (the script's own --quick still measures every part).
EXTRA = {"bench_pipeline.py": ["--stages", "fingerprint", "prepare", "cache", "finetune", "extract"]}
RATIO = re.compile(r"^RATIO (\S+)(?: \([^)]*\))? = [-+0-9.e]+x?(?: \(target .*\))?$", re.M)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick(script: str, tmp_path: Path) -> None:
    out_json = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--device", "cpu",
                           "--json", str(out_json), *EXTRA.get(script, [])],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = set(RATIO.findall(proc.stdout))
    missing = [name for name in EXPECTED[script] if name not in printed]
    assert not missing, f"{script}: no RATIO line for {missing}:\n{proc.stdout[-3000:]}"
    assert "| metric | target | measured |" in proc.stdout
    values = json.loads(out_json.read_text())
    assert all(name in values for name in EXPECTED[script])


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_torch_only(tmp_path: Path) -> None:
    """``gpu_check.sh --device cpu --tiny``: every number printed, and nothing but torch/torchvision
    (and this repo's src/) needed: no Prefect, MLflow, DVC, PyYAML, SciPy or pandas is imported."""
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--tiny", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=600, env={**_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "# modules beyond torch/torchvision loaded: none" in proc.stdout
    values = json.loads(out_json.read_text())
    for arch in ("vgg16", "resnet101"):
        for key in ("finetune_{}_images_per_s", "finetune_{}_ratio", "extract_{}_images_per_s",
                    "extract_{}_vs_forward_backward", "inject_{}_iterations_per_s"):
            assert values[key.format(arch)] > 0, key.format(arch)
    assert "| check | value |" in proc.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _cub_shaped():
    sys.path.insert(0, str(BENCH))
    try:
        import cub_shaped
    finally:
        sys.path.remove(str(BENCH))
    return cub_shaped


def test_cub_shaped_plan_has_cub_protocol_sizes() -> None:
    """At full scale: CUB's 200 classes and real split sizes, unseen classes only in test_unseen,
    about 59 images per class, and the validation classes holding sent_splits' val_loc counts."""
    cub = _cub_shaped()
    names = cub.plan(scale=0.0).class_names
    val = cub.seeded_validation_classes(names[:150], 0.33, 5, seed=0)
    p = cub.plan(scale=1.0, seed=0, val_classes=val)
    assert len(p.class_names) == 200 and p.attributes.shape == (200, 312)
    assert p.sizes() == {"trainval": 7057, "train": 6157, "val": 900, "test_seen": 1764, "test_unseen": 2967,
                         "total": 11788}
    assert len(p.unseen) == 50 and "001.Black_footed_Albatross" in p.unseen and "002.Laysan_Albatross" not in p.unseen
    per_class = np.bincount(p.labels, minlength=200)
    assert 58 <= per_class.min() and per_class.max() <= 60
    unseen = np.isin(np.asarray(p.class_names)[p.labels], p.unseen)
    assert (unseen == (p.splits == "test_unseen")).all()
    for split in ("train", "val", "test_seen"):
        assert set(p.labels[p.splits == split]) == set(range(150))
    assert len(p.validation) == 50 and set(p.validation) <= set(names[:150])
    held = np.isin(np.asarray(p.class_names)[p.labels], p.validation)
    assert held.sum() == 2946 and (held & (p.splits == "test_seen")).sum() == 591  # sent_splits' val_loc


def test_cub_shaped_validation_classes_are_the_pipelines_draw() -> None:
    """The classes given val_loc's counts are those finetune_validation draws for a folder dataset."""
    from niwt.config.load import load_params
    from niwt.data.tables import ClassTable
    from niwt.stages.finetune_validation import validation_classes

    cub = _cub_shaped()
    p = load_params(BENCH.parent / "params.yaml")
    names = cub.plan(scale=0.0).class_names
    table = ClassTable(names, 150, np.ones((200, 1), np.float32), "attributes", ["a"], [""] * 200)
    held, source = validation_classes(table, p)
    assert source == "seeded"
    assert [names[i] for i in held] == cub.seeded_validation_classes(names[:150], p.validate.fraction,
                                                                     p.validate.min_classes, p.base.seed)


def test_cub_shaped_folder_dataset_loads_and_images_follow_attributes(tmp_path: Path) -> None:
    """At 2 % scale: a valid folder dataset (the project's loader reads it, splits.csv included), and
    each image is nearest to its own class's expected image far more often than chance (1/200)."""
    from PIL import Image

    from niwt.data.folder import load_folder

    cub = _cub_shaped()
    proc = subprocess.run([sys.executable, str(BENCH / "cub_shaped.py"), str(tmp_path / "cub"), "--scale", "0.02",
                           "--validation-fraction", "0.33"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = load_folder(tmp_path / "cub")
    assert len(raw.class_names) == 200 and len(raw.unseen) == 50 and raw.attributes.shape == (200, 312)
    splits = np.asarray(raw.image_splits)
    unseen = np.isin(np.asarray(raw.class_names)[raw.image_labels], raw.unseen)
    assert (unseen == (splits == "test_unseen")).all()
    assert all((splits[raw.image_labels == c] == s).any() for c in range(150) for s in ("train", "val", "test_seen"))
    assert (splits == "test_unseen").sum() == round(2967 * 0.02)
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float32).transpose(2, 0, 1).ravel() for f in raw.image_paths])
    assert pixels.shape[1] == 3 * 32 * 32 and pixels.std() > 10
    expected = cub.expected_images(raw.attributes)
    x = pixels - pixels.mean(1, keepdims=True)
    e = expected - expected.mean(1, keepdims=True)
    nearest = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T
    assert (nearest.argmax(1) == raw.image_labels).mean() > 0.2


@pytest.mark.slow
def test_gpu_check_scaling_mode_runs_two_gloo_processes(tmp_path: Path) -> None:
    """``gpu_check.sh --nproc 2`` on the CPU (gloo): the DDP training step at 1 and 2 processes, and
    the efficiency, so the first multi-GPU run can fill in the scaling row."""
    out_json = tmp_path / "ddp.json"
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--tiny", "--nproc", "2",
                           "--arch", "resnet18", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=600, env={**_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    values = json.loads(out_json.read_text())
    assert values["nproc"] == 2
    assert values["ddp_resnet18_images_per_s_1proc"] > 0 and values["ddp_resnet18_images_per_s_2proc"] > 0
    assert values["ddp_scaling_efficiency"] > 0


def _bench_protocol():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_protocol
    finally:
        sys.path.remove(str(BENCH))
    return bench_protocol


def test_bench_protocol_reports_each_reading_from_its_own_setting(tmp_path: Path) -> None:
    """The report on a hand-made project: NIWT's calibrated reading from its own setting (named in
    the table, its oracle row the one the pipeline's cal_H is checked against), targets counted."""
    import argparse

    bp = _bench_protocol()
    shipped, own = {"lr": 0.01, "lambda": 0.01}, {"lr": 0.001, "lambda": 0.001}
    cal = {"calibration_gamma": 1.0, "calibration_margin": 2.0, "calibration_margin_sd": 1.0}
    validation = {"choices": {"niwt": {**shipped, **cal}, "icis": dict(cal)},
                  "calibrated_choices": {"niwt": {**own, **cal, "calibration_gamma": -2.5}},
                  "chosen_by": {"niwt": {"criterion": "H", "calibrated": {"criterion": "cal_H"}},
                                "icis": {"criterion": "cal_H"}},
                  "grid": [{"method": "niwt", "setting": shipped, "H": 0.2}, {"method": "niwt", "setting": own,
                                                                               "H": 0.1},
                           {"method": "icis", "setting": {}, "H": 0.0}], "classes": ["a"], "source": "seeded"}
    headline = {"niwt": {"H": 0.21, "cal_H": 0.32, "AUSUC": 0.15}, "icis": {"H": 0.0, "cal_H": 0.25, "AUSUC": 0.1}}
    for name, doc in (("models/validation.json", validation), ("stats/finetune.json", {"val_acc": 0.5}),
                      ("stats/evaluate.json", headline), *((f"metrics/gzsl/{m}.json", h) for m, h in headline.items())):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(doc))
    found = {"niwt": [{"setting": shipped, "chosen": True, "cal_chosen": False, "H": 0.21, "cal_H": 0.30,
                       "oracle_cal_H": 0.31},
                      {"setting": own, "chosen": False, "cal_chosen": True, "H": 0.15, "cal_H": 0.32,
                       "oracle_cal_H": 0.33}],
             "icis": [{"setting": {}, "chosen": True, "cal_chosen": True, "H": 0.0, "cal_H": 0.25,
                       "oracle_cal_H": 0.30}]}
    args = argparse.Namespace(scale=1.0, width=32, hidden=256, epochs=10, seed=0, set=[])
    text, fails = bp.report(args, tmp_path, {"total": 1, "trainval": 1, "train": 1, "val": 0, "test_seen": 0,
                                             "test_unseen": 0}, ["a"], {"total": 60.0, "generate": 1.0, "repro": 50.0,
                                                                        "oracle": 9.0}, found, None, (0.5, 1.0))
    niwt = next(line for line in text.splitlines() if line.startswith("| niwt |"))
    assert "| H; calibrated by cal_H |" in niwt
    assert "| lr 0.01, lambda 0.01 (1) | lr 0.001, lambda 0.001 (-2.5) |" in niwt
    assert "| icis | cal_H |" in text and "| fixed (1) | the same |" in text
    # the pipeline's numbers agree with the oracle's rows of each reading's setting (H: shipped, cal_H: own)
    assert "max |delta| of test H / cal_H = 0.0e+00 (the same numbers)" in text
    assert "FAIL icis: cal_H >= oracle cal_H - 0.03 (cal_H 0.250, oracle 0.300" in text
    assert "PASS niwt: cal_H >= oracle cal_H - 0.03 (cal_H 0.320, oracle 0.330; the calibrated reading's setting " \
           "with the test gamma 0.330)" in text
    assert "PASS niwt: |test H - val H| <= 0.10 (test H 0.210, val H 0.200)" in text
    assert fails == 1 and text.rstrip().endswith("4 of 5 targets met.")

"""Extraction shards, ``validate`` settings and ``inject`` methods on a 2-worker Dask LocalCluster
(``NIWT_RUNNER=dask``) give the local result (validate and inject bit for bit);
:func:`niwt.distributed.dask.map_jobs` keeps job order, the parent's torch thread count and the
worker's exception."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import env, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow

DASK = ("--runner", "dask", "--dask-workers", "2")


def _niwt(project: Path, *args: str) -> None:
    run([str(Path(sys.executable).parent / "niwt"), *args], project,
        env_={**env(project), "NIWT_TRACKING": "off"})  # MLflow is not what these runs check


def _validate(project: Path, out: str, *runtime: str) -> None:
    _niwt(project, "validate", "--data", "data/prepared", "--backbone", "models/validation_backbone.pt",
          "--out", out, "--cache", "data/cache", *runtime)


def _inject(project: Path, out: str, *runtime: str, validation: str = "models/validation.json") -> None:
    _niwt(project, "inject", "--data", "data/prepared", "--model", "models/finetuned.pt", "--mapping",
          "models/mapping.pt", "--validation", validation, "--out", out, "--cache", "data/cache", *runtime)


def _with_calibrated_choice(project: Path) -> str:
    """validate's choices with a calibrated reading of NIWT's own (its other lr on the chosen map),
    so that inject also builds that reading's rows."""
    from niwt.io.choices import CALIBRATION

    doc = json.loads((project / "models/validation.json").read_text())
    chosen = doc["choices"]["niwt"]
    row = next(r for r in doc["grid"] if r["method"] == "niwt" and r["setting"]["lr"] != chosen["lr"]
               and all(r["setting"][k] == chosen[k] for k in ("mapping_lr", "mapping_weight_decay", "mapping_epochs")))
    own = {**row["setting"], **{k: row[k] for k in CALIBRATION}}
    (project / "models/validation_cal.json").write_text(json.dumps({**doc, "calibrated_choices": {"niwt": own}}))
    return "models/validation_cal.json"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project up to the local ``validate`` (with the decoded-image cache, which workers reopen)."""
    project = make_project(tmp_path_factory.mktemp("dask") / "proj")
    _niwt(project, "prepare", "--out", "data/prepared")
    _niwt(project, "cache", "--data", "data/prepared", "--out", "data/cache")
    _niwt(project, "finetune", "--data", "data/prepared", "--out", "models/finetuned.pt", "--history", "h.csv",
          "--cache", "data/cache")
    _niwt(project, "finetune_validation", "--data", "data/prepared", "--out", "models/validation_backbone.pt",
          "--cache", "data/cache")
    _validate(project, "models/validation.json")
    return project


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a running 2-process Dask cluster (``--dask-address``: a cluster the stage does
    not start), shared by the tests below to save a cluster start each."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_validate_on_dask_matches_local(project: Path) -> None:
    """Every grid row and choice, bit for bit: the workers build the rows with the parent's thread
    count, and the parent scores them in grid order."""
    _validate(project, "models/validation_dask.json", *DASK)
    local = json.loads((project / "models/validation.json").read_text())
    dask = json.loads((project / "models/validation_dask.json").read_text())
    assert len(local["grid"]) > len(local["choices"]) > 1
    assert dask == local


def _extract(project: Path, out: str, *runtime: str) -> None:
    _niwt(project, "extract", "--data", "data/prepared", "--model", "models/finetuned.pt", "--out", out,
          "--cache", "data/cache", *runtime)


@pytest.fixture(scope="module")
def importances(project: Path) -> Path:
    """The local extraction (several shards: the tiny runtime's NIWT_SHARD_SIZE)."""
    _extract(project, "data/importances")
    return project / "data/importances"


def test_extract_on_dask_matches_local(project: Path, importances: Path) -> None:
    """Every shard computed on the stage's own 2-worker LocalCluster, the same importances."""
    import numpy as np

    from niwt.io.parquet import read_importances

    _extract(project, "data/importances_dask", "--stats", "dask.json", *DASK)
    metrics = json.loads((project / "dask.json").read_text())
    assert metrics["shards_computed"] == metrics["n_shards"] > 1
    dask = project / "data/importances_dask"
    assert sorted(p.name for p in importances.glob("part-*")) == sorted(p.name for p in dask.glob("part-*"))
    a, b = read_importances(importances), read_importances(dask)
    assert a.meta == b.meta
    np.testing.assert_array_equal(a.image_id, b.image_id)
    np.testing.assert_array_equal(a.target_id, b.target_id)
    # shards are not pinned to the parent's thread count: single-threaded sums, last-bit differences
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)


def test_inject_on_dask_matches_local(project: Path, importances: Path, scheduler: str) -> None:
    """Each method's checkpoint holds the same classifier rows and calibration rows, bit for bit, and
    NIWT's the same rows of its calibrated reading (here on a running cluster, ``--dask-address``)."""
    from niwt.models.checkpoint import load_checkpoint

    _niwt(project, "fit_mapping", "--data", "data/prepared", "--importances", "data/importances", "--validation",
          "models/validation.json", "--out", "models/mapping.pt", "--inverse-out", "models/inverse_map.pt",
          "--history", "mapping.csv")
    validation = _with_calibrated_choice(project)
    _inject(project, "models/injected", validation=validation)
    _inject(project, "models/injected_dask", "--runner", "dask", "--dask-address", scheduler, validation=validation)
    names = sorted(p.name for p in (project / "models/injected").glob("*.pt"))
    assert len(names) > 1
    assert names == sorted(p.name for p in (project / "models/injected_dask").glob("*.pt"))
    for name in names:
        (a, meta_a), (b, meta_b) = (load_checkpoint(project / d / name) for d in ("models/injected",
                                                                                    "models/injected_dask"))
        assert torch.equal(a.classifier.weight, b.classifier.weight), name
        assert torch.equal(a.classifier.bias, b.classifier.bias), name
        assert meta_a.calibration.keys() == meta_b.calibration.keys()
        for key, value in meta_a.calibration.items():
            assert torch.equal(value, meta_b.calibration[key]), (name, key)
        assert (meta_a.calibrated_rows is None) == (meta_b.calibrated_rows is None) == (name != "niwt.pt")
        for key, value in (meta_a.calibrated_rows or {}).items():  # NIWT's calibrated reading, both partitions
            same = torch.equal(value, meta_b.calibrated_rows[key]) if key != "setting" else \
                value == meta_b.calibrated_rows[key]
            assert same, (name, key)


def _add(job: int, offset: int) -> tuple[int, int]:
    if job < 0:
        raise KeyError(f"job {job}")
    return job + offset, torch.get_num_threads()


def test_map_jobs_keeps_order_threads_and_errors(scheduler: str) -> None:
    from niwt.distributed.dask import dask_client, map_jobs

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a worker starts with 1 (OMP_NUM_THREADS=1): the job must get this count
    try:
        with dask_client(scheduler) as client:
            assert map_jobs(client, _add, list(range(6)), (10,)) == [(j + 10, 3) for j in range(6)]
            with pytest.raises(KeyError, match="job -1"):  # the worker's exception, as its own type
                map_jobs(client, _add, [1, -1, 2], (0,))
    finally:
        torch.set_num_threads(before)


def test_run_cache_keeps_the_last_runs() -> None:
    from niwt.distributed.dask import run_cache

    first = run_cache("run-a")
    first["pool"] = 1
    assert run_cache("run-a") is first
    run_cache("run-b")
    run_cache("run-c")  # keeps two: run-a goes
    assert run_cache("run-a") == {}


def test_worker_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker runs in its own working directory: a relative pool folder or cache would name other files."""
    from niwt.distributed.dask import absolute, absolute_pool
    from niwt.params import InjectParams

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert absolute_pool(InjectParams(pool="pools/natural")).pool == str(tmp_path.resolve() / "pools/natural")
    assert absolute_pool(InjectParams(pool="train")).pool == "train"
    assert absolute(Path("data/cache")) == tmp_path / "sub/data/cache"
    assert absolute(None) is None

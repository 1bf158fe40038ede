"""Checkpoints and mappings that do not fit the dataset are refused with one line naming the file
and the mismatch: classifiers for other, fewer or more classes; a fine-tuned checkpoint where
``evaluate`` needs an injected one; mappings fit on other domain vectors, with held-out classes of
another dataset, or not written by ``fit_mapping``. The tiny project stays untouched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _project import Project, assert_failed_cleanly, class_names, cli, stage_argv

from niwt.models.checkpoint import load_checkpoint, save_checkpoint
from niwt.models.networks import build_model

pytestmark = pytest.mark.usefixtures("_quiet")


# ------------------------------------------------------------------ checkpoints of the wrong kind


def _checkpoint_with(proj: Project, path: Path, names: list[str]) -> Path:
    """A real smallcnn checkpoint (tiny sizes) whose classifier has ``len(names)`` outputs."""
    _, meta = load_checkpoint(proj.model)
    model = build_model("smallcnn", len(names), width=meta.width, hidden=meta.hidden,
                        image_size=meta.image_size)
    save_checkpoint(path, model, meta.replace(class_names=tuple(names), n_seen=len(names)))
    return path


def _wrong(kind: str, proj: Project, tmp: Path) -> tuple[Path, str]:
    names = class_names(proj)
    seen = names[:9]
    if kind == "other classes":
        ckpt = _checkpoint_with(proj, tmp / "other.pt", ["zebra"] + seen[1:])
        return ckpt, r"other\.pt: checkpoint classes do not match the dataset \(9 outputs; first mismatch: " \
                     r"checkpoint 'zebra'\)"
    if kind == "fewer classes":
        ckpt = _checkpoint_with(proj, tmp / "fewer.pt", seen[:8])
        return ckpt, r"fewer\.pt: checkpoint has 8 output classes but the dataset has 9 seen classes"
    if kind == "more classes":
        ckpt = _checkpoint_with(proj, tmp / "more.pt", names[:10])
        return ckpt, r"more\.pt: checkpoint has 10 output classes but the dataset has 9 seen classes"
    raise AssertionError(kind)


WRONG_KINDS = ["other classes", "fewer classes", "more classes"]


@pytest.mark.parametrize("stage", ["extract", "inject"])
@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_wrong_checkpoint_for_the_dataset(stage: str, kind: str, proj: Project, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, untouched: None) -> None:
    ckpt, pattern = _wrong(kind, proj, tmp_path)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv(stage, proj, out, proj.params, model=ckpt))
    assert_failed_cleanly(rc, err, pattern, out)


@pytest.mark.parametrize("kind", ["finetuned (seen classes only)", "other classes"])
def test_wrong_checkpoint_at_evaluate(kind: str, proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      untouched: None) -> None:
    injected = tmp_path / "injected"
    injected.mkdir()
    shutil.copy(proj.injected / "regression.pt", injected / "regression.pt")
    if kind == "other classes":
        _checkpoint_with(proj, injected / "niwt.pt", class_names(proj)[:-1] + ["zebra"])
        pattern = r"niwt\.pt: checkpoint classes do not match the dataset \(12 outputs; first mismatch: " \
                  r"checkpoint 'zebra'\)"
    else:
        shutil.copy(proj.model, injected / "niwt.pt")
        pattern = r"niwt\.pt: checkpoint has 9 output classes but the dataset has 12 classes \(seen \+ unseen\)"
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("evaluate", proj, out, proj.params, injected=injected))
    assert_failed_cleanly(rc, err, pattern, out)


# ------------------------------------------------------------------- mappings that do not fit


def _mapping_other_domain(m: dict) -> dict:
    return {**m, "weight": m["weight"][:, :-1], "heldout_weight": m["heldout_weight"][:, :-1]}


MAPPING_CASES = {
    "fit on other domain vectors": (
        _mapping_other_domain,
        r"mapping\.pt: mapping takes 15-dimensional domain vectors, \S+domain\.parquet has 16-dimensional ones "
        r"\(attributes\); rerun fit_mapping"),
    "held-out classes of another dataset": (
        lambda m: {**m, "val_classes": torch.tensor([0, 11])},
        r"mapping\.pt: held-out classes \[0, 11\] are not seen classes of this dataset"),
    "not a mapping": (
        lambda m: {"weight": m["weight"]},
        r"mapping\.pt: not a mapping written by fit_mapping \(missing \['bias', 'best_epoch'"),
}


@pytest.mark.parametrize("case", list(MAPPING_CASES))
def test_inject_rejects_a_mapping_that_does_not_fit(case: str, proj: Project, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture, untouched: None) -> None:
    edit, pattern = MAPPING_CASES[case]
    mapping = tmp_path / "mapping.pt"
    torch.save(edit(torch.load(proj.mapping, weights_only=True)), mapping)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("inject", proj, out, proj.params, mapping=mapping))
    assert_failed_cleanly(rc, err, pattern, out)

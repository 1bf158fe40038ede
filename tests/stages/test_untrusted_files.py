"""Checkpoint and mapping files are untrusted input: every ``torch.load`` is weights-only, pickled
Python objects are refused without running them (by the loader and by every stage that reads such a
file), and a truncated checkpoint is a one-line model error.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
import torch
from _project import Project, assert_failed_cleanly, cli, stage_argv

from niwt.models.checkpoint import load_checkpoint
from niwt.models.networks import ModelError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import REPO  # noqa: E402

pytestmark = pytest.mark.usefixtures("_quiet")


class _Exploit:
    """Unpickling this runs a shell command, unless the loader refuses arbitrary globals."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_every_torch_load_is_weights_only() -> None:
    """Static check over src/: each ``torch.load(...)`` call passes ``weights_only=True`` literally."""
    calls = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pickle", "dill", "cloudpickle"):
                calls.append((f"{path.relative_to(REPO)}:{node.lineno} ({node.value.id}.{node.attr})", False))
    assert calls, "no torch.load found: the check is looking in the wrong place"
    assert [where for where, ok in calls if not ok] == []


def test_pickled_object_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"arch": "smallcnn", "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match=r"evil\.pt: not a readable checkpoint: it holds pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["extract --model", "inject --model", "inject --mapping", "evaluate --injected"])
def test_stages_refuse_pickled_objects(where: str, proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       untouched: None) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "injected" / "niwt.pt"
    evil.parent.mkdir()
    torch.save({"weight": torch.zeros(2, 2), "payload": _Exploit(marker)}, evil)
    stage, flag = where.split()
    out = tmp_path / "out"
    kwargs = {"--model": {"model": evil}, "--mapping": {"mapping": evil},
              "--injected": {"injected": evil.parent}}[flag]
    rc, err = cli(capsys, *stage_argv(stage, proj, out, proj.params, **kwargs))
    what = "mapping" if flag == "--mapping" else "checkpoint"
    assert_failed_cleanly(rc, err, rf"niwt\.pt: not a readable {what}: it holds pickled Python objects, which are "
                                   r"never loaded \(weights_only=True\): .*GLOBAL posix\.system", out)
    assert "weights_only=False" not in err  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()


def test_truncated_checkpoint_is_a_model_error(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               untouched: None) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(proj.model.read_bytes()[:5000])
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("extract", proj, out, proj.params, model=cut))
    assert_failed_cleanly(rc, err, r"cut\.pt: not a readable checkpoint \(\w+Error: .*\); truncated, or not written "
                                   r"by torch\.save\?", out)

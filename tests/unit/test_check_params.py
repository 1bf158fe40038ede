"""`niwt check` and the Prefect flow read params.yaml before DVC does (issue 25, 8): an alias bomb, which
makes DVC grow to gigabytes, is one line and exit 2 in milliseconds; so is a file too large to be params."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from niwt.cli import main
from niwt.errors import InputError

REPO = Path(__file__).resolve().parents[2]
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefghi", "bcdefghij", strict=True))


def test_check_refuses_an_alias_bomb_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bomb = tmp_path / "params.yaml"
    bomb.write_text(BOMB)
    start = time.perf_counter()
    assert main(["check", "--params", str(bomb)]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bomb}:2: YAML alias *a is not allowed in a params file" in err


def test_check_refuses_a_huge_file_and_passes_the_shipped_params(tmp_path: Path, capsys) -> None:
    huge = tmp_path / "params.yaml"
    huge.write_text("# padding\n" * 200_000)
    assert main(["check", "--params", str(huge)]) == 2
    assert "a params file is a few KiB (limit 1 MiB): not a params file" in capsys.readouterr().err
    assert main(["check", "--params", str(REPO / "params.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_the_flow_checks_params_before_any_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(REPO))
    import flows.pipeline as flow_module

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran before params.yaml was checked")

    monkeypatch.setattr(flow_module, "stage_flow", no_stage)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    flow_module.check_params(tmp_path)
    (tmp_path / "params.yaml").write_text(BOMB)
    with pytest.raises(InputError, match="YAML alias"):
        flow_module.pipeline.fn(workdir=str(tmp_path))

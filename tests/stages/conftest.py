"""Fixtures of the stage tests: the tiny project, built once per session, whose outputs no failing
stage may change; and the quiet, tiny-runtime environment the stage-failure tests run under.

The plain helpers (``Project``, ``write_params``, ``cli``, ``stage_argv``, ...) are in ``_project.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _project import Project, build_project, snapshot, temp_leftovers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import TINY_RUNTIME  # noqa: E402


@pytest.fixture(scope="session")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The tiny project: prepared, fine-tuned, validated, extracted, mapped and injected once."""
    return build_project(tmp_path_factory.mktemp("tiny-project"))


@pytest.fixture
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking and progress bars off; several importance shards and small batches.

    Not autouse: the other stage modules choose their own environment. Opt in with
    ``pytestmark = pytest.mark.usefixtures("_quiet")``.
    """
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    for key, value in TINY_RUNTIME.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def untouched(proj: Project):
    """Asserts, after the test, that the tiny project (earlier stages' outputs) is byte-identical and
    holds no temp file."""
    before = snapshot(proj.root)
    yield
    assert snapshot(proj.root) == before, "a failing stage changed the outputs of earlier stages"
    assert temp_leftovers(proj.root) == []

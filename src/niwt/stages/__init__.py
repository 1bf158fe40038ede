"""The I/O layer: one module per pipeline stage, each exposing ``run(params, paths) -> StageResult``.

Stage modules read and write files and may log progress; the numerical work lives in the pure
core (``niwt.models``, ``niwt.importance``, ``niwt.mapping``, ``niwt.injection``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("prepare", "finetune", "extract", "fit_mapping", "inject", "evaluate", "explain")


@dataclass
class StageResult:
    """What a stage hands back to the CLI: metrics (to JSON and MLflow) and small artifacts."""

    metrics: dict[str, float | int | str]
    artifacts: list[Path] = field(default_factory=list)

"""The stage layer: one module per pipeline stage, each exposing ``run(params, runtime, paths) -> StageResult``.

Stages read and write files and may log progress; the numerical work lives in the core packages
(``niwt.models``, ``niwt.importance``, ``niwt.mapping``, ``niwt.injection``, ...). Stages never import
each other: what one stage needs from another comes from that stage's output files. The list of
stages, with the params each reads, is :data:`niwt.pipeline.STAGES` (wiring, outside every stage's
DVC lineage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """What a stage hands back to the CLI.

    Attributes:
        metrics: every number of the stage (the ``--stats`` JSON, and MLflow metrics of its run).
        artifacts: small files to log to the stage's MLflow run.
        runs: one MLflow child run per entry (name -> metrics), tagged ``method``: the same metric
            names in each, so MLflow's compare view puts methods side by side.
        steps: per-epoch metrics (name -> list of (step, value)), logged with their step.
        cleanup: files kept for a rerun (finetune's resume state) that the CLI deletes only after the
            stats are written and logged, so no later failure costs the work they hold.
    """

    metrics: dict
    artifacts: list[Path] = field(default_factory=list)
    runs: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cleanup: list[Path] = field(default_factory=list)

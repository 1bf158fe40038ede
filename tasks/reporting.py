"""Publish the evaluation summary as a Prefect markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from niwt.evaluation.report import comparison_markdown


@task(cache_policy=NO_CACHE)
def publish_summary(workdir: str = ".", metrics_file: str = "stats/evaluate.json",
                    stages: dict[str, str] | None = None) -> str:
    """Publish the evaluate numbers (and which stages ran or were skipped) as the flow run's
    markdown artifact."""
    metrics = json.loads((Path(workdir) / metrics_file).read_text())
    markdown = "# NIWT pipeline: GZSL comparison (%)\n\n" + comparison_markdown(metrics)
    if stages:
        markdown += "\n## Stages\n\n| stage | this run |\n|---|---|\n" + "".join(
            f"| {stage} | {what} |\n" for stage, what in stages.items())
    create_markdown_artifact(markdown=markdown, key="niwt-comparison", description="methods x metrics")
    return markdown

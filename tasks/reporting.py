"""Publish the evaluation summary as a Prefect markdown artifact."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

COLUMNS = ("S", "U", "H", "zsl_top1", "ausuc", "seen_acc")


def comparison_markdown(metrics: dict[str, dict[str, float]]) -> str:
    """Methods x metrics table in percent, best value of each column in bold."""
    cols = [c for c in COLUMNS if any(c in m for m in metrics.values())]
    best = {c: max(m.get(c, float("-inf")) for m in metrics.values()) for c in cols}
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, m in metrics.items():
        cells = []
        for c in cols:
            v = m.get(c)
            text = "–" if v is None else f"{100 * v:.1f}"
            cells.append(f"**{text}**" if v is not None and v == best[c] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@task(cache_policy=NO_CACHE)
def publish_summary(workdir: str = ".", metrics_file: str = "metrics/evaluate.json") -> str:
    """Read the evaluate metrics and publish them as the flow run's markdown artifact."""
    metrics = json.loads((Path(workdir) / metrics_file).read_text())
    markdown = "# NIWT pipeline: GZSL comparison (%)\n\n" + comparison_markdown(metrics)
    create_markdown_artifact(markdown=markdown, key="niwt-comparison", description="methods x metrics")
    return markdown

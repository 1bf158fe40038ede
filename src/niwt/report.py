"""The methods x metrics comparison table, as markdown (MLflow artifact, Prefect artifact, README)."""

from __future__ import annotations

COLUMNS = ("S", "U", "H", "cal_S", "cal_U", "cal_H", "ausuc", "zsl_top1", "seen_acc")


def comparison_markdown(metrics: dict[str, dict[str, float]]) -> str:
    """Methods x metrics in percent; the best value of each column in bold."""
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

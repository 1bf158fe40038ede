"""The methods x metrics comparison table (MLflow artifact, Prefect artifact, HTML report, README)."""

from __future__ import annotations

COLUMNS = ("S", "U", "H", "cal_S", "cal_U", "cal_H", "heldout_H", "ausuc", "zsl_top1", "seen_acc")


def comparison_rows(metrics: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table: methods in registry order, values in percent, the best of each
    column in bold (markdown ``**``)."""
    from niwt.injection.methods import label
    from niwt.injection.registry import ordered

    methods = ordered(list(metrics))
    cols = [c for c in COLUMNS if any(c in metrics[m] for m in methods)]
    best = {c: max(metrics[m].get(c, float("-inf")) for m in methods) for c in cols}
    rows = []
    for method in methods:
        cells = [label(method)]
        for c in cols:
            v = metrics[method].get(c)
            text = "–" if v is None else f"{100 * v:.1f}"
            cells.append(f"**{text}**" if v is not None and v == best[c] else text)
        rows.append(cells)
    return ["method", *cols], rows


def comparison_markdown(metrics: dict[str, dict[str, float]]) -> str:
    """The table as markdown."""
    header, rows = comparison_rows(metrics)
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def calibration_markdown(metrics: dict[str, dict[str, float]]) -> str:
    """The two calibration rules side by side, per method: gamma and test S, U, H with the gamma
    ``validate`` chose on classes its backbone never saw, and with the older gamma chosen on seen
    classes held out from the map only (the finetuned network was trained on them)."""
    from niwt.injection.methods import label
    from niwt.injection.registry import ordered

    lines = ["| method | γ class-disjoint | cal S | cal U | cal H | γ held-out seen | S | U | H |",
             "|---" * 9 + "|"]
    for method in ordered(list(metrics)):
        m = metrics[method]
        if "heldout_gamma" not in m:
            continue
        cells = [f"{m['gamma']:.3g}", *(f"{100 * m[k]:.1f}" for k in ("cal_S", "cal_U", "cal_H")),
                 f"{m['heldout_gamma']:.3g}", *(f"{100 * m[k]:.1f}" for k in ("heldout_S", "heldout_U", "heldout_H"))]
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def settings_markdown(settings: dict[str, tuple[dict[str, float], dict[str, float] | None]]) -> str:
    """Which setting produced each reading, per method (``settings``: method -> (its setting as
    shipped, its calibrated reading's own setting or None when the one setting serves both)): S, U,
    H, AUSUC, ZSL T1 and seen accuracy read the rows as shipped; ``cal_*`` the calibrated reading's."""
    from niwt.injection.methods import label
    from niwt.injection.registry import ordered

    def text(setting: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in setting.items()) or "(no hyperparameters)"

    lines = ["| method | as shipped (S, U, H, AUSUC, zsl_top1) | calibrated (cal_*) |", "|---|---|---|"]
    for method in ordered(list(settings)):
        shipped, own = settings[method]
        lines.append(f"| {label(method)} | {text(shipped)} | {text(own) if own is not None else 'the same'} |")
    return "\n".join(lines) + "\n"

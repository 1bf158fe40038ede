"""The registry of injection methods: NIWT and its peers, one entry each.

An entry holds the method's name (the ``inject.methods`` value and its checkpoint's file stem), its
display label, the name of the function in :mod:`niwt.injection.methods` that builds its rows,
whether it reads images (the stage then checks them before any work) and whether it writes rows
for the seen classes too. Params validation, ``inject``, ``evaluate``, the report and the flow all
read this one table. It imports nothing heavy, so reading params stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    builder: str  # function of niwt.injection.methods: (Context, Partition) -> Rows
    needs_images: bool  # reads seen training images (the NIWT pool, ESZSL's features)
    replaces_seen: bool  # writes rows for the seen classes too (a compatibility model)
    # how it is used, hence what validate tunes it for (validate.criterion: auto): as_shipped (its
    # rows as they are: uncalibrated H) or calibrated (with calibrated stacking: calibrated H)
    reading: str = "calibrated"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("niwt", "NIWT", "niwt_rows", needs_images=True, replaces_seen=False, reading="as_shipped"),
    Method("icis", "ICIS", "icis_rows", needs_images=False, replaces_seen=False),
    Method("regression", "ridge regression", "regression_rows", needs_images=False, replaces_seen=False),
    Method("regression_rescaled", "ridge regression, rescaled", "regression_rescaled_rows", needs_images=False,
           replaces_seen=False),
    Method("eszsl", "ESZSL", "eszsl_rows", needs_images=True, replaces_seen=True),
)}


def ordered(names: list[str]) -> list[str]:
    """Method names in registry order (NIWT first), unknown names after, sorted."""
    return [m for m in METHODS if m in names] + sorted(n for n in names if n not in METHODS)


def method_checkpoints(directory: Path) -> list[Path]:
    """The injected checkpoints in ``directory`` (``<method>.pt``), in registry order."""
    found = {p.stem: p for p in Path(directory).glob("*.pt")}
    if not found:
        raise FileNotFoundError(f"{directory}: no injected checkpoints; run `dvc repro inject`")
    return [found[name] for name in ordered(list(found))]

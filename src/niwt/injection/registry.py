"""The registry of injection methods: the one list of method modules, and what an entry declares.

Each method is one module that declares ``METHOD = Method(...)``: its name, label, the function
that builds its rows, its candidate settings, what it reads and whether it replaces the seen rows.
:data:`MODULES` lists those modules, in the order every table, plot and checkpoint list uses
(NIWT first). Adding a method is one module plus one line here; a method outside this package (a
module of your own on ``sys.path``) is added the same way, by its dotted module path. A run with no
``inject.methods`` runs every registered method except those of :data:`OPT_IN` (:func:`defaults`),
which run only where ``inject.methods`` names them.

A method's name is the last part of its module path: the ``inject.methods`` value, the stem of its
checkpoint (``<name>.pt``) and of its metrics file. This module imports nothing heavy: params
validation reads the names (:data:`METHODS`) without importing a single method; the entries
themselves are loaded by :func:`niwt.injection.methods.method`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from niwt.injection.context import Context, Partition, Rows
    from niwt.params import InjectParams

MODULES: tuple[str, ...] = (
    "niwt.injection.methods.niwt",
    "niwt.injection.methods.icis",
    "niwt.injection.methods.regression",
    "niwt.injection.methods.regression_rescaled",
    "niwt.injection.methods.eszsl",
    "niwt.injection.methods.devise",
    "niwt.injection.methods.ale",
    "niwt.injection.methods.sje",
    "niwt.injection.methods.sae",
)

# Registered, but run only where ``inject.methods`` names them: the classic compatibility models
# (Xian et al.'s GBU peers), kept out of the default run so that its committed results stay as they were.
OPT_IN: frozenset[str] = frozenset({"devise", "ale", "sje", "sae"})


def no_settings(cfg: InjectParams) -> list[dict[str, float]]:
    """The candidate grid of a method without hyperparameters: one empty setting."""
    return [{}]


@dataclass(frozen=True)
class Method:
    """One injection method, as its module declares it (``METHOD = Method(...)``).

    Attributes:
        name: the last part of the module's path (checked when it is loaded).
        label: how tables and plots name it.
        build: ``(Context, Partition) -> Rows``: the rows of ``partition.unseen`` (and of the
            seen classes, with ``replaces_seen``); it reads its hyperparameters with
            ``context.setting(name)``.
        settings: ``InjectParams -> [setting, ...]``: every setting ``validate`` tries, in grid
            order (a tie goes to the first); each a dict of hyperparameter name -> value, all
            with the same names.
        needs_images: it reads seen training images (the stages check them before any work).
        needs_pool: it reads ``inject.pool`` (a folder pool is checked before any work).
        needs_mapping: its rows come from the forward map: ``validate`` also tries each of
            ``mapping.candidate_epochs`` (setting ``mapping_epochs``), and ``fit_mapping`` trains
            for the epochs chosen with this method.
        replaces_seen: it writes rows for the seen classes too (a compatibility model).
        reading: how it is used, hence what ``validate`` tunes it for with ``validate.criterion:
            auto``: ``as_shipped`` (its rows as they are: uncalibrated H) or ``calibrated`` (with
            calibrated stacking: calibrated H).
        heldout: ``(Context, Partition) -> float``, or None: the method's own class-held-out signal
            under the context's setting (higher is better), computed from ``partition.seen`` alone
            (e.g. how well a regression predicts the rows of seen classes left out of its fit).
            With ``validate.criterion: auto`` a method that has one is tuned by it (criterion
            ``heldout``), its calibration gamma chosen after on the validation problem.
    """

    name: str
    label: str
    build: Callable[[Context, Partition], Rows]
    settings: Callable[[InjectParams], list[dict[str, float]]] = no_settings
    needs_images: bool = False
    needs_pool: bool = False
    needs_mapping: bool = False
    replaces_seen: bool = False
    reading: str = "calibrated"
    heldout: Callable[[Context, Partition], float] | None = None


def name_of(module: str) -> str:
    """A method's name: the last part of its module path."""
    return module.rsplit(".", 1)[-1]


def names() -> tuple[str, ...]:
    """Every registered method name, in registry order (read from :data:`MODULES` when asked)."""
    return tuple(name_of(m) for m in MODULES)


def defaults() -> tuple[str, ...]:
    """The methods a run with no ``inject.methods`` runs: every registered one but :data:`OPT_IN`."""
    return tuple(n for n in names() if n not in OPT_IN)


class _Names(Sequence[str]):
    """The registered names as a live sequence: ``tuple(METHODS)``, ``name in METHODS``."""

    def __getitem__(self, index):  # type: ignore[override]
        return names()[index]

    def __len__(self) -> int:
        return len(MODULES)

    def __repr__(self) -> str:
        return f"METHODS{names()}"


METHODS: Sequence[str] = _Names()


def ordered(found: list[str]) -> list[str]:
    """Method names in registry order (NIWT first), unknown names after, sorted."""
    known = names()
    return [m for m in known if m in found] + sorted(n for n in found if n not in known)


def method_checkpoints(directory: Path) -> list[Path]:
    """The injected checkpoints in ``directory`` (``<method>.pt``), in registry order."""
    found = {p.stem: p for p in Path(directory).glob("*.pt")}
    if not found:
        raise FileNotFoundError(f"{directory}: no injected checkpoints; run `dvc repro inject`")
    return [found[name] for name in ordered(list(found))]

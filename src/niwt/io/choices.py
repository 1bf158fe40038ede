"""``models/validation.json``: what ``validate`` chose, read by ``fit_mapping``, ``inject`` and ``evaluate``.

One JSON document: the validation classes, whether the backbone was class-disjoint, per method the
chosen hyperparameters, calibration gamma and the mean and standard deviation of the seen margins
it is measured against (how ``evaluate`` transfers it), the forward map's epochs, and the whole grid with
its validation numbers (for people: ``jq '.grid[] | select(.method=="niwt")'``).

A method whose setting was chosen by uncalibrated H (NIWT, shipped as it is) serves only that
reading; its calibrated reading gets a setting of its own, chosen by calibrated H among the settings
that share the chosen forward map: ``calibrated_choices`` (absent for the others, whose one setting
serves both readings; :meth:`Choices.calibrated`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from niwt.errors import InputError

VERSION = 3  # 2: calibration_margin per method; 3: calibration_margin_sd, calibrated_choices


# What a method's choice holds besides its hyperparameters: the calibration chosen with them, and the
# mean and standard deviation of the seen margins it is carried to the final network by.
CALIBRATION = ("calibration_gamma", "calibration_margin", "calibration_margin_sd")


class ChoicesError(InputError):
    """A validation-choices file that cannot be used."""


@dataclass(frozen=True)
class Reading:
    """One reading's choice: the hyperparameters, and the calibration gamma with the mean and
    standard deviation of its seen margins."""

    hyper: dict[str, float]
    gamma: float
    margin: float
    spread: float


@dataclass(frozen=True)
class Choices:
    path: Path
    classes: list[str]
    class_disjoint: bool
    hyper: dict[str, dict[str, float]]  # method -> {name: value}, without the calibration gamma
    gamma: dict[str, float]  # method -> calibration gamma chosen on the validation problem
    margin: dict[str, float]  # method -> mean seen margin on the validation problem (transfer_gamma)
    spread: dict[str, float]  # method -> the seen margins' standard deviation there
    mapping_epochs: int | None
    mapping_hyper: tuple[float, float] | None = None  # the forward map's (lr, weight decay), NIWT's choice
    calibrated_choices: dict[str, Reading] | None = None  # method -> its calibrated reading's own choice

    def calibrated(self, method: str) -> Reading:
        """The setting, gamma and margin of ``method``'s calibrated reading: its own choice where
        ``validate`` made one (a method chosen by uncalibrated H), else the one choice."""
        own = (self.calibrated_choices or {}).get(method)
        if own is not None and own.hyper != self.hyper[method]:
            return own
        return Reading(self.hyper[method], self.gamma[method], self.margin[method], self.spread[method])

    def separate(self, method: str) -> bool:
        """Whether ``method``'s calibrated reading comes from another setting than its rows as shipped."""
        return self.calibrated(method).hyper != self.hyper[method]

    def require(self, methods: list[str] | tuple[str, ...], names: dict[str, set[str]] | None = None) -> None:
        """Every method must have been validated (else: rerun validate with the same methods), with
        every hyperparameter in ``names`` (method -> the names its rows need)."""
        missing = [m for m in methods if m not in self.hyper]
        if missing:
            raise ChoicesError(f"{self.path}: no validated choice for {missing} (it has {sorted(self.hyper)}); "
                               "rerun `dvc repro validate` with the same inject.methods")
        for method, needed in (names or {}).items():
            lacking = sorted(set(needed) - set(self.hyper.get(method, {})))
            if lacking:
                raise ChoicesError(f"{self.path}: the choice of {method!r} lacks {lacking}; rerun `dvc repro validate`")


def write_choices(path: Path, document: dict) -> None:
    from niwt.io.atomic import write_json

    write_json(Path(path), {"version": VERSION, **document})


def read_choices(path: Path) -> Choices:
    """Read and check ``validate``'s output; problems are one :class:`ChoicesError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: validation choices not found; run `dvc repro validate`")
    try:
        doc = json.loads(path.read_text())
    except ValueError as err:
        raise ChoicesError(f"{path}: not valid JSON ({err}); rerun `dvc repro validate`") from err
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("choices"), dict):
        raise ChoicesError(f"{path}: not a validation-choices file of version {VERSION}; rerun `dvc repro validate`")
    readings = {method: _reading(f"choices of {method!r}", choice, path) for method, choice in doc["choices"].items()}
    own = doc.get("calibrated_choices")
    if own is not None and (not isinstance(own, dict) or set(own) - set(readings)):
        raise ChoicesError(f"{path}: 'calibrated_choices' must map validated methods to choices, got {own!r}")
    calibrated = {method: _reading(f"calibrated_choices of {method!r}", choice, path)
                  for method, choice in (own or {}).items()}
    for method, reading in calibrated.items():
        main = readings[method].hyper
        shared = {k: v for k, v in main.items() if k.startswith("mapping_")}  # inject builds both on one map
        if set(reading.hyper) != set(main) or any(reading.hyper[k] != v for k, v in shared.items()):
            raise ChoicesError(f"{path}: the calibrated choice of {method!r} must name the same hyperparameters "
                               f"and forward map as its choice ({main}), got {reading.hyper}")
    epochs = doc.get("mapping_epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ChoicesError(f"{path}: 'mapping_epochs' must be a positive integer or null, got {epochs!r}")
    return Choices(path, list(doc.get("classes", [])), bool(doc.get("class_disjoint", False)),
                   {m: r.hyper for m, r in readings.items()}, {m: r.gamma for m, r in readings.items()},
                   {m: r.margin for m, r in readings.items()}, {m: r.spread for m, r in readings.items()}, epochs,
                   _mapping_hyper(doc.get("mapping"), path), calibrated or None)


def _reading(what: str, choice: object, path: Path) -> Reading:
    """One choice (``what``: where in the file, for errors): numbers only, the calibration among them."""
    if not isinstance(choice, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in choice.values()):
        raise ChoicesError(f"{path}: {what} must map names to numbers, got {choice!r}")
    lacking = [k for k in CALIBRATION if k not in choice]
    if lacking:
        raise ChoicesError(f"{path}: {what} lack {lacking}; rerun `dvc repro validate`")
    return Reading({k: float(v) for k, v in choice.items() if k not in CALIBRATION},
                   *(float(choice[k]) for k in CALIBRATION))


def _mapping_hyper(mapping: object, path: Path) -> tuple[float, float] | None:
    """The forward map's chosen (lr, weight decay), or None (NIWT not validated)."""
    if mapping is None:
        return None
    values = (mapping.get("lr"), mapping.get("weight_decay")) if isinstance(mapping, dict) else (None, None)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ChoicesError(f"{path}: 'mapping' must give a non-negative lr and weight_decay, got {mapping!r}")
    return float(values[0]), float(values[1])

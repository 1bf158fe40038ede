"""The fitted maps on disk (``models/mapping.pt``, ``models/inverse_map.pt``) and the held-out classes.

A map file carries what it was fit on: the importance layer and pooling (read from the
importances' metadata), the domain kind, and the seen classes held out for model selection. The
stages downstream read these from here, never from another stage's params, and check them where
two artifacts meet (:func:`check_same_importance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from niwt.io.atomic import atomic_path
from niwt.mapping.linear import MappingResult
from niwt.models.checkpoint import safe_load
from niwt.models.networks import ModelError


@dataclass(frozen=True)
class Provenance:
    """What a map was fit on."""

    layer: str
    pooling: str
    domain_kind: str
    val_classes: np.ndarray  # seen classes held out for model selection (sorted)


@dataclass(frozen=True)
class StoredMap:
    """A map read back from disk: the fitted weights and their provenance."""

    weight: torch.Tensor
    bias: torch.Tensor
    best_epoch: int
    provenance: Provenance
    heldout_weight: torch.Tensor | None = None
    heldout_bias: torch.Tensor | None = None
    attribute_names: tuple[str, ...] = ()
    selection: dict[str, float] = field(default_factory=dict)  # held-out scores at the best epoch


_KEYS = ("weight", "bias", "best_epoch", "layer", "pooling", "domain_kind", "val_classes")


def save_map(path: Path, result: MappingResult, provenance: Provenance, attribute_names: list[str] | None = None,
             heldout: bool = True) -> None:
    """Write a map atomically (tensors and primitives only: read back with ``weights_only``)."""
    state = {"weight": result.weight, "bias": result.bias, "best_epoch": result.best_epoch,
             "layer": provenance.layer, "pooling": provenance.pooling, "domain_kind": provenance.domain_kind,
             "val_classes": torch.as_tensor(provenance.val_classes),
             "selection": next({k: float(v) for k, v in h.items() if k != "epoch"} for h in result.history
                               if h["epoch"] == result.best_epoch)}
    if heldout:
        state.update(heldout_weight=result.heldout_weight, heldout_bias=result.heldout_bias)
    if attribute_names is not None:
        state["attribute_names"] = list(attribute_names)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_map(path: Path, what: str = "mapping", heldout: bool = True) -> StoredMap:
    """Read a map written by :func:`save_map`; a missing file or key is a ModelError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run `dvc repro fit_mapping`")
    state = safe_load(path, what)
    keys = _KEYS + (("heldout_weight", "heldout_bias") if heldout else ())
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
    if missing:
        raise ModelError(f"{path}: not a {what} written by fit_mapping (missing {missing}); rerun fit_mapping")
    provenance = Provenance(str(state["layer"]), str(state["pooling"]), str(state["domain_kind"]),
                            state["val_classes"].numpy())
    return StoredMap(state["weight"], state["bias"], int(state["best_epoch"]), provenance,
                     state.get("heldout_weight"), state.get("heldout_bias"),
                     tuple(state.get("attribute_names", ())), dict(state.get("selection", {})))


def check_same_importance(a: object, a_name: str | Path, b: object, b_name: str | Path) -> None:
    """Two artifacts that meet must describe the same importance (layer and pooling); each is a
    record with ``layer`` and ``pooling`` (a map's provenance, a checkpoint's metadata) or a dict
    (the importances' file metadata)."""
    get = lambda x, k: x.get(k, "") if isinstance(x, dict) else (getattr(x, k) or "")  # noqa: E731
    for key in ("layer", "pooling"):
        if get(a, key) and get(b, key) and get(a, key) != get(b, key):
            raise ModelError(f"{a_name} was made with importance {key} {get(a, key)!r} but {b_name} with "
                             f"{get(b, key)!r}; rerun the stages after extract (`dvc repro`)")

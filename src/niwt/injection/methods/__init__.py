"""The injection methods, one module each, and what the stages do with any of them.

Every module of this package (NIWT and its peers) declares ``METHOD = Method(...)``;
:data:`niwt.injection.registry.MODULES` lists them. This module loads an entry by name
(:func:`method`) and holds what ``validate`` and ``inject`` share, so neither names a method: the
candidate grid (:func:`candidates`), the checks of what the methods read (:func:`needs_images`,
:func:`check_pool`), the forward map chosen (:func:`chosen_mapping`), the
classifier a method builds (:func:`build_classifier`) and its own held-out signal (:func:`heldout_score`).
"""

from __future__ import annotations

import importlib

import torch

from niwt.errors import InputError
from niwt.injection import registry
from niwt.injection.context import Context, Partition, pool_folder_images
from niwt.injection.registry import Method
from niwt.mapping.linear import map_candidates
from niwt.params import InjectParams, MappingParams


def method(name: str) -> Method:
    """The registry entry of ``name``, from its module's ``METHOD``; a module that declares none,
    or another name, is one clear error naming the module."""
    entry, where = _load(name)
    if not isinstance(entry, Method):
        raise InputError(f"{where}: an injection method module must declare METHOD = Method(...), found {entry!r}")
    if entry.name != name:
        raise InputError(f"{where}: METHOD.name is {entry.name!r}, but the module registers {name!r} "
                         "(the name is the module's last path part)")
    return entry


def label(name: str) -> str:
    """How tables and plots name ``name`` (the name itself for a method no longer registered)."""
    return method(name).label if name in registry.names() else name


MAPPING_SETTINGS = ("mapping_lr", "mapping_weight_decay", "mapping_epochs")


def candidates(name: str, inject: InjectParams, mapping: MappingParams) -> list[dict[str, float]]:
    """Every setting ``validate`` tries for ``name``, in grid order (a tie goes to the first): the
    method's own grid, and, for a method that needs the forward map, that grid under each of the
    map's candidates (outermost: ``mapping.lr`` x ``mapping.weight_decay``, then
    ``mapping.candidate_epochs``; as ``mapping_lr``, ``mapping_weight_decay``, ``mapping_epochs``)."""
    entry = method(name)
    grid = entry.settings(inject)
    if entry.needs_mapping:
        grid = [{"mapping_lr": h.lr, "mapping_weight_decay": h.weight_decay, "mapping_epochs": e, **s}
                for h in map_candidates(mapping) for e in mapping.candidate_epochs for s in grid]
    if len({tuple(s) for s in grid}) > 1:
        raise InputError(f"{_load(name)[1]}: the settings of {name!r} "
                         f"must all name the same hyperparameters, got {sorted({tuple(s) for s in grid})}")
    return grid


def setting_names(name: str, inject: InjectParams) -> set[str]:
    """The hyperparameters a validated choice of ``name`` must hold (``mapping_epochs`` too, for a
    method that needs the forward map)."""
    entry = method(name)
    found = {key for setting in entry.settings(inject) for key in setting}
    return found | set(MAPPING_SETTINGS) if entry.needs_mapping else found


def needs_images(names: tuple[str, ...] | list[str]) -> bool:
    """Whether any of ``names`` reads the seen training images."""
    return any(method(n).needs_images for n in names)


def check_pool(names: tuple[str, ...] | list[str], cfg: InjectParams, features: bool = False) -> None:
    """A folder ``inject.pool`` read by any of ``names`` must hold images, and the network must read images
    (``features``: the data are precomputed feature vectors); checked before any work."""
    if cfg.pool not in ("train", "noise") and any(method(n).needs_pool for n in names):
        if features:
            raise InputError(f"inject.pool: {cfg.pool!r} is a folder of images, but the network reads precomputed "
                             "features (data.name: xlsa17); use train or noise")
        pool_folder_images(cfg.pool)


def chosen_mapping(choices: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The forward map ``fit_mapping`` trains (``lr``, ``weight_decay``, ``epochs``): the one chosen
    with the first method of ``choices`` whose rows come from the map; None when none does (the
    first candidates and the held-out rule then decide)."""
    for name, choice in choices.items():
        if method(name).needs_mapping:
            return {"lr": choice["mapping_lr"], "weight_decay": choice["mapping_weight_decay"],
                    "epochs": int(choice["mapping_epochs"])}
    return None


def build_classifier(ctx: Context, name: str, part: Partition) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(len(seen)+len(unseen), D) weight and bias: seen rows (kept, or replaced), then the new rows;
    and the method's stats."""
    entry = method(name)
    rows = entry.build(ctx.for_method(name), part)
    w_s, b_s = rows.seen if entry.replaces_seen else ctx.seen_rows(part.seen)
    return torch.cat([w_s, rows.weight.float()]), torch.cat([b_s, rows.bias.float()]), dict(rows.stats)


def heldout_score(ctx: Context, name: str, part: Partition) -> float | None:
    """``name``'s own class-held-out signal under the context's setting (``Method.heldout``, from
    ``part.seen`` alone), or None for a method without one."""
    entry = method(name)
    return None if entry.heldout is None else float(entry.heldout(ctx.for_method(name), part))


def _load(name: str) -> tuple[object, str]:
    """(the ``METHOD`` of ``name``'s module, the module's file) for error messages."""
    modules = {registry.name_of(m): m for m in registry.MODULES}
    if name not in modules:
        raise KeyError(f"unknown injection method {name!r}; registered: {' '.join(modules)}")
    module = importlib.import_module(modules[name])
    return getattr(module, "METHOD", None), getattr(module, "__file__", modules[name])

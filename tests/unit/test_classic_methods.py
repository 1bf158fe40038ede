"""The classic compatibility models as registry methods (DEVISE, ALE, SJE, SAE): each method's rows are
exactly those its peer core (``niwt.peers``) gives on the seen classes' training features, for the real
partition and for a validation-like one, and its candidate grid is the documented one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from niwt.config.load import parse_params
from niwt.data.tables import ClassTable, SplitTable
from niwt.injection.context import Context, Partition
from niwt.injection.methods import build_classifier, candidates, method, setting_names
from niwt.injection.registry import OPT_IN, defaults
from niwt.models.networks import NiwtNet
from niwt.params import InjectParams, MappingParams
from niwt.peers.ale import fit_ale
from niwt.peers.bilinear import class_rows
from niwt.peers.devise import fit_devise
from niwt.peers.sae import fit_sae, sae_rows
from niwt.peers.sje import fit_sje

CLASSIC = ("devise", "ale", "sje", "sae")
FITS = {"devise": fit_devise, "ale": fit_ale, "sje": fit_sje}

# 6 classes (4 seen, 2 unseen), 3 attributes, 5 feature dimensions; 3 training images per seen class
# (labels out of class order, as a split table gives them).
NAMES = ["a", "b", "c", "d", "u1", "u2"]
DOMAIN = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                   [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=np.float32)
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
FEATS = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32) + np.eye(5, dtype=np.float32)[LABELS]
UNIT = DOMAIN / np.linalg.norm(DOMAIN, axis=1, keepdims=True)  # Context.domain: L2-normalised, float64
REAL = Partition(np.arange(4), np.array([4, 5]))
HELD = Partition(np.array([0, 2, 3]), np.array([1]), heldout=True)  # class b plays the unseen role


def _context(hyper: dict[str, dict[str, float]], seed: int = 7) -> Context:
    classes = ClassTable(NAMES, 4, DOMAIN, "attributes", ["x", "y", "z"], NAMES)
    splits = SplitTable(np.arange(12), [f"{i}.png" for i in range(12)], LABELS, np.array(["train"] * 12))
    net = NiwtNet(torch.nn.Identity(), torch.nn.Linear(5, 4))
    return Context(net, InjectParams(), seed, classes, splits, None, 16, torch.device("cpu"), hyper=hyper,
                   _cache={"train_features": (FEATS, LABELS)})  # the features, as if computed


def _training(part: Partition) -> tuple[np.ndarray, np.ndarray]:
    """By hand: the images of ``part.seen``'s classes, labels their positions in ``part.seen``."""
    if part is REAL:
        return FEATS, LABELS
    keep = np.array([0, 2, 3, 4, 6, 7, 8, 10, 11])  # the images of a, c, d (not b)
    return FEATS[keep], np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("part", [REAL, HELD], ids=["real", "heldout"])
@pytest.mark.parametrize("name", ["devise", "ale", "sje"])
def test_sgd_methods_give_the_peer_cores_rows(name: str, part: Partition) -> None:
    ctx = _context({name: {"lr": 0.3, "epochs": 3}})
    weight, bias, stats = build_classifier(ctx, name, part)
    X, y = _training(part)
    V = FITS[name](X, y, UNIT[part.seen], lr=0.3, epochs=3, seed=7)
    expected = torch.cat([class_rows(V, UNIT[part.seen]), class_rows(V, UNIT[part.unseen])])
    assert torch.equal(weight, expected)  # seen rows replaced, then the new rows, all from one V
    assert torch.equal(bias, torch.zeros(len(part.seen) + len(part.unseen)))
    assert stats == {"lr": 0.3, "epochs": 3}
    assert V.abs().sum() > 0  # it trained
    other = build_classifier(_context({name: {"lr": 0.3, "epochs": 1}}), name, part)[0]
    assert not torch.equal(other, weight)  # the chosen epochs are used


@pytest.mark.parametrize("part", [REAL, HELD], ids=["real", "heldout"])
def test_sae_gives_the_peer_cores_rows_and_decomposes_once(part: Partition) -> None:
    shared: dict = {"train_features": (FEATS, LABELS)}
    X, y = _training(part)
    for lam in (0.1, 10.0):
        ctx = _context({"sae": {"lam": lam}})
        ctx._cache = shared
        weight, bias, stats = build_classifier(ctx, "sae", part)
        V = fit_sae(X, y, UNIT[part.seen], lam)
        expected = torch.cat([sae_rows(V, UNIT[part.seen], "s2f"), sae_rows(V, UNIT[part.unseen], "s2f")])
        torch.testing.assert_close(weight, expected, rtol=0, atol=0)
        assert torch.equal(bias, torch.zeros(len(weight))) and stats == {"lam": lam}
        torch.testing.assert_close(weight.norm(dim=1), torch.ones(len(weight)))  # S->F: unit rows
    assert len([k for k in shared if k.startswith("sae_system:")]) == 1  # one decomposition for both lams


def test_the_classic_methods_read_their_chosen_setting() -> None:
    with pytest.raises(KeyError, match="no 'lam' chosen for 'sae'"):
        build_classifier(_context({"sae": {"alpha": 1.0}}), "sae", REAL)
    with pytest.raises(KeyError, match="no 'epochs' chosen for 'ale'"):
        build_classifier(_context({"ale": {"lr": 1.0}}), "ale", REAL)


def test_classic_grids_are_the_documented_ones() -> None:
    mapping = MappingParams()
    cfg = InjectParams(devise_lr=(0.1, 1.0), ale_lr=(3.0,), sje_lr=(1.0, 10.0), bilinear_epochs=(5, 20),
                       sae_exponents=(-1, 2))
    assert candidates("devise", cfg, mapping) == [{"lr": 0.1, "epochs": 5}, {"lr": 0.1, "epochs": 20},
                                                  {"lr": 1.0, "epochs": 5}, {"lr": 1.0, "epochs": 20}]
    assert candidates("ale", cfg, mapping) == [{"lr": 3.0, "epochs": 5}, {"lr": 3.0, "epochs": 20}]
    assert candidates("sje", cfg, mapping) == [{"lr": 1.0, "epochs": 5}, {"lr": 1.0, "epochs": 20},
                                               {"lr": 10.0, "epochs": 5}, {"lr": 10.0, "epochs": 20}]
    assert candidates("sae", cfg, mapping) == [{"lam": 0.1}, {"lam": 100.0}]
    # the defaults (params.yaml): lr x epochs, epochs innermost; SAE's lam = 10^e
    p = parse_params({})
    assert p.inject.devise_lr == (0.03, 0.1, 0.3, 1.0) and p.inject.ale_lr == (0.3, 1.0, 3.0, 10.0)
    assert p.inject.sje_lr == (0.1, 1.0, 10.0) and p.inject.bilinear_epochs == (5, 10, 20)
    assert p.inject.sae_exponents == (-2, -1, 0, 1, 2, 3, 4)
    assert len(candidates("devise", p.inject, p.mapping)) == 12 and len(candidates("sje", p.inject, p.mapping)) == 9
    assert candidates("sae", p.inject, p.mapping) == [{"lam": 10.0**e} for e in range(-2, 5)]
    for name in ("devise", "ale", "sje"):
        assert setting_names(name, p.inject) == {"lr", "epochs"}
    assert setting_names("sae", p.inject) == {"lam"}


def test_classic_methods_are_registered_opt_in_compatibility_models() -> None:
    assert OPT_IN == set(CLASSIC) and not OPT_IN & set(defaults())
    for name in CLASSIC:
        entry = method(name)
        assert entry.needs_images and entry.replaces_seen and not entry.needs_mapping and not entry.needs_pool
        assert entry.reading == "calibrated" and entry.label == name.upper()
    opted = parse_params({"inject": {"methods": ["regression", *CLASSIC]}}).inject.methods
    assert opted == ("regression", *CLASSIC)


@pytest.mark.parametrize(("raw", "error"), [
    ({"devise_lr": []}, r"inject\.devise_lr: give at least one candidate"),
    ({"ale_lr": [0.0]}, r"inject\.ale_lr: candidates must be between"),
    ({"bilinear_epochs": [0]}, r"inject\.bilinear_epochs: candidates must be between 1 and 10000"),
    ({"sae_exponents": [13]}, r"inject\.sae_exponents: candidates must be between -12 and 12"),
    ({"sje_lr": [1e9]}, r"inject\.sje_lr: candidates must be between"),
])
def test_classic_grids_are_bounded(raw: dict, error: str) -> None:
    from niwt.errors import ParamsError

    with pytest.raises(ParamsError, match=error):
        parse_params({"inject": raw})

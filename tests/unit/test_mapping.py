"""Exact tests of the domain -> importance map (``niwt.mapping.linear``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from niwt.mapping.linear import (
    _train,
    class_mean_importance,
    cosine_distance,
    fit_inverse_map,
    fit_mapping,
    fit_snapshots,
    normalize_domain,
    predict_importance,
    rank_correlation,
)
from niwt.params import MappingParams

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cosine_distance_hand_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert cosine_distance(a, b).item() == pytest.approx(0.5)  # cos 0 and 1 -> (1 + 0) / 2
    assert cosine_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 0.0]])).item() == pytest.approx(2.0)
    # cos 60 degrees = 0.5 -> distance 0.5; scale-free
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[5.0, 5.0 * math.sqrt(3)]])
    assert cosine_distance(x, y).item() == pytest.approx(0.5, abs=1e-6)


def test_class_mean_importance_hand_values() -> None:
    alphas = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # unit rows: [.6, .8], [0, 1], [1, 0], [0, 1]; order follows the classes argument
    got = class_mean_importance(alphas, labels, torch.tensor([1, 0]))
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.5], [0.3, 0.9]]))


def test_rank_correlation_hand_values() -> None:
    pred = torch.tensor([[1.0, 2, 3, 4], [1.0, 2, 3, 4], [1.0, 2, 3, 4]])
    target = torch.tensor([[10.0, 20, 30, 40], [4.0, 3, 2, 1], [1.0, 3, 2, 4]])
    # rows: 1, -1, and 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert rank_correlation(pred[:1], target[:1]) == pytest.approx(1.0)
    assert rank_correlation(pred[1:2], target[1:2]) == pytest.approx(-1.0)
    assert rank_correlation(pred[2:], target[2:]) == pytest.approx(0.8)
    assert rank_correlation(pred, target) == pytest.approx(0.8 / 3)
    # monotone but nonlinear: still 1; a constant row (undefined rho) is ignored by the mean
    assert rank_correlation(torch.tensor([[1.0, 2, 3]]), torch.tensor([[1.0, 4, 9]])) == pytest.approx(1.0)
    with np.errstate(invalid="ignore"), pytest.warns(Warning):
        got = rank_correlation(torch.tensor([[1.0, 2, 3], [1.0, 2, 3]]),
                               torch.tensor([[3.0, 2, 1], [5.0, 5, 5]]))
    assert got == pytest.approx(-1.0)


def test_predict_importance_normalises_domain() -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([0.0, 1.0, -1.0])
    dom = np.array([[3.0, 4.0], [0.0, 10.0]])
    # unit domain rows [.6, .8] and [0, 1]
    want = torch.tensor([[0.6, 2.6, 0.4], [0.0, 3.0, 0.0]])
    torch.testing.assert_close(predict_importance(w, b, dom), want)
    torch.testing.assert_close(normalize_domain(torch.tensor(dom)).norm(dim=1), torch.ones(2))


def planted(seed: int = 0, n_cls: int = 30, n_seen: int = 25, a: int = 10, c: int = 16, per: int = 16,
            noise: float = 0.3):
    """Domain (n_cls, a) ~ N(0, 1); alpha_i = D[y_i] W^T + noise; classes >= n_seen have no images."""
    rng = np.random.default_rng(seed)
    dom = rng.normal(size=(n_cls, a))
    w = rng.normal(size=(c, a))
    labels = np.repeat(np.arange(n_seen), per)
    clean = dom[labels] @ w.T
    alphas = clean + noise * np.abs(clean).mean() * rng.normal(size=clean.shape)
    return dom, w, labels, alphas.astype(np.float32)


def test_fit_mapping_recovers_planted_linear_map() -> None:
    dom, w, labels, alphas = planted()
    val = np.arange(20, 25)
    res = fit_mapping(dom, labels, alphas, val, MappingParams(epochs=30, lr=(0.01,), batch_size=64), seed=0)
    assert res.weight.shape == (16, 10) and res.bias.shape == (16,)
    assert [h["epoch"] for h in res.history] == list(range(1, 31))
    best = res.history[res.best_epoch - 1]
    assert best["val_rank_corr"] > 0.9  # held-out seen classes
    # classes never seen in training at all
    unseen = np.arange(25, 30)
    truth = torch.tensor(dom[unseen] @ w.T, dtype=torch.float32)
    assert rank_correlation(predict_importance(res.weight, res.bias, dom[unseen]), truth) > 0.9
    assert cosine_distance(predict_importance(res.weight, res.bias, dom[unseen]), truth).item() < 0.05


def test_selection_and_determinism() -> None:
    dom, _, labels, alphas = planted(seed=1, n_cls=12, n_seen=12, a=6, c=8, per=8, noise=1.0)
    val = np.array([9, 10, 11])
    cfg = MappingParams(epochs=8, lr=(0.05,), batch_size=16)
    res = fit_mapping(dom, labels, alphas, val, cfg, seed=3)
    corr = [h["val_rank_corr"] for h in res.history]
    assert res.best_epoch == int(np.argmax(corr)) + 1
    again = fit_mapping(dom, labels, alphas, val, cfg, seed=3)
    assert torch.equal(again.weight, res.weight) and torch.equal(again.bias, res.bias)
    assert again.history == res.history
    by_loss = fit_mapping(dom, labels, alphas, val, dataclasses.replace(cfg, selection="val_loss"), seed=3)
    assert by_loss.history == res.history  # same selection run; only the pick differs
    assert by_loss.best_epoch == int(np.argmin([h["val_loss"] for h in res.history])) + 1
    other = fit_mapping(dom, labels, alphas, val, cfg, seed=4)
    assert not torch.equal(other.weight, res.weight)


def test_trace_and_refit_recomputed_independently() -> None:
    """history = scores of a run on the non-validation images, recomputed here per epoch;
    the returned map = a run on all images for best_epoch epochs."""
    dom, _, labels, alphas = planted(seed=2, n_cls=10, n_seen=10, a=5, c=6, per=6, noise=0.5)
    val = np.array([8, 9])
    cfg = MappingParams(epochs=4, lr=(0.05,), batch_size=8)
    res = fit_mapping(dom, labels, alphas, val, cfg, seed=0)
    d = normalize_domain(torch.as_tensor(dom))
    lab = torch.as_tensor(labels)
    alp = torch.as_tensor(alphas)
    is_val = torch.isin(lab, torch.as_tensor(val))
    unit = alp[is_val] / alp[is_val].norm(dim=1, keepdim=True)
    target = torch.stack([unit[lab[is_val] == c].mean(0) for c in val])
    seen = []

    def record(epoch, linear):
        with torch.no_grad():
            pred = d[lab[is_val]] @ linear.weight.T + linear.bias
            cos = (pred * alp[is_val]).sum(1) / (pred.norm(dim=1) * alp[is_val].norm(dim=1))
            seen.append((epoch, (1 - cos).mean().item(), rank_correlation(linear(d[torch.as_tensor(val)]), target)))

    _train(d, lab[~is_val], alp[~is_val], cfg, 0, cfg.epochs, on_epoch=record)
    assert len(seen) == len(res.history) == 4
    for (epoch, loss, corr), h in zip(seen, res.history, strict=True):
        assert h["epoch"] == epoch
        assert h["val_loss"] == pytest.approx(loss, abs=1e-6)
        assert h["val_rank_corr"] == pytest.approx(corr, abs=1e-9)
    refit = _train(d, lab, alp, cfg, 0, res.best_epoch)
    assert torch.equal(refit.weight.detach(), res.weight) and torch.equal(refit.bias.detach(), res.bias)


@pytest.mark.parametrize("fit", [fit_mapping, fit_inverse_map])
def test_held_out_classes_are_split_by_true_class(fit) -> None:
    """With ``extract.target: predicted`` an image's importance is of its *predicted* class. The
    held-out (validation) classes must be split by the *true* class: a misclassified image of a
    held-out class must not train the map that is to exclude that class."""
    dom, _, true, alphas = planted(seed=3, n_cls=12, n_seen=12, a=6, c=8, per=8)
    val = np.array([9, 10, 11])
    predicted = true.copy()
    wrong = np.flatnonzero(true == 10)[:3]
    predicted[wrong] = 2  # three images of held-out class 10 predicted as a fitting class
    cfg = MappingParams(epochs=3, lr=(0.05,), batch_size=16)
    garbage = alphas.copy()
    garbage[wrong] = np.random.default_rng(0).normal(size=garbage[wrong].shape) * 50
    a = fit(dom, predicted, alphas, val, cfg, seed=0, true_labels=true)
    b = fit(dom, predicted, garbage, val, cfg, seed=0, true_labels=true)
    assert torch.equal(a.heldout_weight, b.heldout_weight)  # those images never trained the held-out map
    # the failure this prevents: split by the predicted label, they do
    c = fit(dom, predicted, alphas, val, cfg, seed=0)
    d = fit(dom, predicted, garbage, val, cfg, seed=0)
    assert not torch.equal(c.heldout_weight, d.heldout_weight)
    # with the true target (the default) both rules agree exactly
    e = fit(dom, true, alphas, val, cfg, seed=0)
    f = fit(dom, true, alphas, val, cfg, seed=0, true_labels=true)
    assert torch.equal(e.weight, f.weight) and torch.equal(e.heldout_weight, f.heldout_weight)


def test_snapshots_equal_runs_of_that_many_epochs() -> None:
    """``validate`` takes the map at each candidate epoch from one run: each snapshot must be
    exactly the map of a separate run of that many epochs."""
    dom, _, labels, alphas = planted(seed=4, n_cls=8, n_seen=8, a=5, c=6, per=6)
    cfg = MappingParams(epochs=5, lr=(0.05,), batch_size=8)
    snaps = fit_snapshots(dom, labels, alphas, cfg, seed=2, epochs=(1, 3))
    assert sorted(snaps) == [1, 3]
    d, lab, alp = normalize_domain(torch.as_tensor(dom)), torch.as_tensor(labels), torch.as_tensor(alphas)
    for e in (1, 3):
        ref = _train(d, lab, alp.float(), cfg, 2, e)
        assert torch.equal(snaps[e][0], ref.weight.detach()) and torch.equal(snaps[e][1], ref.bias.detach())


def test_fit_mapping_refits_through_the_snapshots_validate_takes() -> None:
    """The forward map ``fit_mapping`` saves is, bit for bit, the snapshot ``validate`` scores for the
    same epochs: one fitter for both, so a change to it changes both."""
    dom, _, labels, alphas = planted(seed=6, n_cls=10, n_seen=10, a=5, c=6, per=6)
    cfg = MappingParams(epochs=4, lr=(0.05,), batch_size=8)
    val = np.array([7, 8, 9])
    snaps = fit_snapshots(dom, labels, alphas, cfg, seed=1, epochs=(2, 3))
    for e in (2, 3):
        res = fit_mapping(dom, labels, alphas, val, cfg, seed=1, epochs=e)
        assert torch.equal(res.weight, snaps[e][0]) and torch.equal(res.bias, snaps[e][1])


def test_validated_epochs_override_the_held_out_rule() -> None:
    dom, _, labels, alphas = planted(seed=1, n_cls=12, n_seen=12, a=6, c=8, per=8, noise=1.0)
    val = np.array([9, 10, 11])
    cfg = MappingParams(epochs=6, lr=(0.05,), batch_size=16)
    rule = fit_mapping(dom, labels, alphas, val, cfg, seed=3)
    chosen = 2 if rule.best_epoch != 2 else 3
    res = fit_mapping(dom, labels, alphas, val, cfg, seed=3, epochs=chosen)
    assert res.best_epoch == chosen and res.heldout_epoch == rule.best_epoch == rule.heldout_epoch
    assert res.history == rule.history  # the held-out trace is the same run
    d = normalize_domain(torch.as_tensor(dom))
    ref = _train(d, torch.as_tensor(labels), torch.as_tensor(alphas).float(), cfg, 3, chosen)
    assert torch.equal(res.weight, ref.weight.detach())
    longer = fit_mapping(dom, labels, alphas, val, cfg, seed=3, epochs=9)  # beyond mapping.epochs: trace grows
    assert longer.best_epoch == 9 and len(longer.history) == 9


def test_heldout_trace_per_candidate_and_hyper_reaches_the_optimiser() -> None:
    """Each (lr, weight decay) candidate trains its own map (validate records every trace), and
    the first candidates are the default when none is given."""
    from niwt.mapping.linear import MapHyper, heldout_trace, map_candidates

    rng = np.random.default_rng(0)
    dom = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.repeat(np.arange(6), 5)
    alphas = (dom[labels] @ rng.normal(size=(4, 7)) + 0.1 * rng.normal(size=(30, 7))).astype(np.float32)
    cfg = MappingParams(epochs=4, lr=(0.01, 0.1), weight_decay=(0.0, 0.5), batch_size=8)
    assert map_candidates(cfg) == [MapHyper(0.01, 0.0), MapHyper(0.01, 0.5), MapHyper(0.1, 0.0), MapHyper(0.1, 0.5)]
    traces = [heldout_trace(dom, labels, alphas, np.array([1, 4]), cfg, seed=0, hyper=h, epochs=3)
              for h in map_candidates(cfg)]
    assert all([t["epoch"] for t in trace] == [1, 2, 3] for trace in traces)
    losses = {tuple(round(t["val_loss"], 6) for t in trace) for trace in traces}
    assert len(losses) == 4  # lr and weight decay both change the trajectory
    default = fit_snapshots(dom, labels, alphas, cfg, seed=2, epochs=(2,))
    first = fit_snapshots(dom, labels, alphas, cfg, seed=2, epochs=(2,), hyper=MapHyper(0.01, 0.0))
    assert torch.equal(default[2][0], first[2][0])


def test_the_map_is_chosen_where_its_heldout_trace_peaks_among_the_candidate_epochs() -> None:
    """peak_of: the best (lr, weight decay, epochs) by held-out rank correlation (highest) or
    cosine loss (lowest), only at candidate epochs, first in grid order on a tie; None without traces."""
    from niwt.mapping.linear import peak_of

    def trace(lr, wd, corr, loss):
        return {"lr": lr, "weight_decay": wd,
                "history": [{"epoch": e + 1, "val_rank_corr": c, "val_loss": v}
                            for e, (c, v) in enumerate(zip(corr, loss, strict=True))]}

    traces = [trace(0.01, 0.0, [0.2, 0.5, 0.9], [0.9, 0.5, 0.1]),
              trace(0.001, 0.0, [0.6, 0.7, 0.3], [0.4, 0.3, 0.2]),
              trace(0.001, 1e-4, [0.7, 0.1, 0.0], [0.35, 0.6, 0.7])]
    assert peak_of(traces, (1, 2, 3), "rank_corr") == (0.01, 0.0, 3)
    assert peak_of(traces, (1, 2), "rank_corr") == (0.001, 0.0, 2)  # epoch 3 is not a candidate
    assert peak_of(traces, (1,), "rank_corr") == (0.001, 1e-4, 1)
    assert peak_of(traces, (1, 2, 3), "val_loss") == (0.01, 0.0, 3)
    assert peak_of(traces, (1, 2), "val_loss") == (0.001, 0.0, 2)
    tie = [trace(0.1, 0.0, [0.5], [0.5]), trace(0.2, 0.0, [0.5], [0.5])]
    assert peak_of(tie, (1,), "rank_corr") == (0.1, 0.0, 1)
    nan_first = [trace(0.1, 0.0, [float("nan")], [0.5]), trace(0.2, 0.0, [0.1], [0.5])]
    assert peak_of(nan_first, (1,), "rank_corr") == (0.2, 0.0, 1)
    assert peak_of([{"lr": 0.1, "weight_decay": 0.0, "history": None}], (1,), "rank_corr") is None

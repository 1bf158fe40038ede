"""A sixth injection method, added the way a user adds one: one module that declares ``METHOD``, and
its dotted path on the registry's list. No stage is touched; validate, inject and evaluate run it
(on the tiny synthetic project) and it comes out with its choice, its checkpoint and its metrics. The
classic compatibility models, registered but opt-in, run the same way once ``inject.methods`` names them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.cli import main  # noqa: E402
from niwt.data.images import make_loader  # noqa: E402
from niwt.data.tables import read_tables  # noqa: E402
from niwt.evaluation.gzsl import mean_seen_margin  # noqa: E402
from niwt.injection import registry  # noqa: E402
from niwt.io.choices import CALIBRATION  # noqa: E402
from niwt.models.checkpoint import load_checkpoint  # noqa: E402
from niwt.models.training import predict  # noqa: E402
from tiny_project import REPO, TINY, merge  # noqa: E402

PLUGIN = '''
"""Every unseen class gets the mean seen row, scaled: a trivial method."""

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.registry import Method


def settings(cfg):
    return [{"scale": 0.5}, {"scale": 2.0}]


def build(ctx: Context, part: Partition) -> Rows:
    weight, bias = ctx.seen_rows(part.seen)
    n = len(part.unseen)
    return Rows(ctx.setting("scale") * weight.mean(0).expand(n, -1), bias.mean().expand(n))


METHOD = Method("mean_seen", "mean seen row", build, settings)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module ``niwt_test_plugins.mean_seen`` on sys.path, and its line in the registry."""
    package = tmp_path / "plugins" / "niwt_test_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mean_seen.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, "niwt_test_plugins.mean_seen"))
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    return "mean_seen"


def _run_stages(root: Path, inject: dict) -> None:
    """prepare .. evaluate on the tiny project in ``root``, with these ``inject`` params."""
    root.mkdir()
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), {"inject": inject})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data, model, validation = root / "prepared", root / "finetuned.pt", root / "validation.json"
    injected, plots, gzsl = root / "injected", root / "plots", root / "gzsl"
    for argv in (["prepare", "--out", data],
                 ["finetune", "--data", data, "--out", model, "--history", root / "ft.csv"],
                 ["finetune_validation", "--data", data, "--out", root / "backbone.pt"],
                 ["validate", "--data", data, "--backbone", root / "backbone.pt", "--out", validation],
                 ["extract", "--data", data, "--model", model, "--out", root / "importances"],
                 ["fit_mapping", "--data", data, "--importances", root / "importances", "--validation", validation,
                  "--out", root / "mapping.pt", "--inverse-out", root / "inverse.pt", "--history", root / "map.csv"],
                 ["inject", "--data", data, "--model", model, "--mapping", root / "mapping.pt",
                  "--validation", validation, "--out", injected],
                 ["evaluate", "--data", data, "--injected", injected, "--validation", validation,
                  "--plots", plots, "--headline", gzsl, "--stats", root / "evaluate.json"]):
        assert main([str(a) for a in argv] + ["--params", str(root / "params.yaml")]) == 0, argv[0]


def test_a_method_of_one_module_runs_through_validate_inject_and_evaluate(plugin: str, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _run_stages(root, {"methods": ["regression", plugin]})
    model, validation = root / "finetuned.pt", root / "validation.json"
    injected, plots, gzsl = root / "injected", root / "plots", root / "gzsl"

    # validate tried both of its settings and chose one
    choices = json.loads(validation.read_text())
    assert [r["setting"] for r in choices["grid"] if r["method"] == plugin] == [{"scale": 0.5}, {"scale": 2.0}]
    scale = choices["choices"][plugin]["scale"]
    assert scale in (0.5, 2.0) and "calibration_gamma" in choices["choices"][plugin]
    assert choices["mapping_epochs"] is None  # no method here needs the forward map: the held-out rule
    # ridge regression is tuned by its own signal, the held-out R² of the rows; the plugin by cal_H
    ridge = [r for r in choices["grid"] if r["method"] == "regression"]
    best = max(ridge, key=lambda r: r["heldout"])
    assert choices["chosen_by"]["regression"]["criterion"] == "heldout"
    assert {k: choices["choices"]["regression"][k] for k in best["setting"]} == best["setting"]
    assert choices["chosen_by"][plugin]["criterion"] == "cal_H" and "heldout" not in choices["grid"][-1]
    # inject wrote its checkpoint: the seen rows as finetuned, each unseen row the scaled mean seen row
    assert sorted(p.name for p in injected.glob("*.pt")) == ["mean_seen.pt", "regression.pt"]
    net, meta = load_checkpoint(injected / "mean_seen.pt")
    base, _ = load_checkpoint(model)
    n_seen = base.classifier.weight.shape[0]
    w, b = net.classifier.weight.detach(), net.classifier.bias.detach()
    assert meta.method == plugin and w.shape[0] == len(meta.class_names) > n_seen
    assert torch.equal(w[:n_seen], base.classifier.weight.detach())
    torch.testing.assert_close(w[n_seen:], (scale * base.classifier.weight.detach().mean(0)).expand_as(w[n_seen:]))
    torch.testing.assert_close(b[n_seen:], base.classifier.bias.detach().mean().expand(len(w) - n_seen))
    # evaluate found it: its headline metrics, its curve, its row (by its label) in the comparison table
    headline = json.loads((gzsl / f"{plugin}.json").read_text())
    assert set(headline) == {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"}
    assert (plots / "curves" / f"{plugin}.csv").is_file()
    assert "| mean seen row |" in (plots / "comparison.md").read_text()
    # evaluate carries validate's gamma in units of the mean seen margin: the validation problem's, and
    # this network's on its val images (seen classes); not the validation backbone's gamma as an offset
    stats, data = json.loads((root / "evaluate.json").read_text()), root / "prepared"
    classes, splits = read_tables(data)
    val = splits.select("val")
    for method in ("regression", plugin):
        net, meta = load_checkpoint(injected / f"{method}.pt")
        feats, _ = predict(net, make_loader(val.path, val.class_id, meta.image_size, train=False, batch_size=64),
                           torch.device("cpu"), features=True)
        with torch.no_grad():
            scores = net.classifier(torch.as_tensor(feats)).numpy()
        chosen = choices["choices"][method]
        row = next(r for r in choices["grid"] if r["method"] == method
                   and {k: chosen[k] for k in r["setting"]} == r["setting"])
        gamma, mean, sd = (chosen[k] for k in ("calibration_gamma", "calibration_margin", "calibration_margin_sd"))
        assert (mean, sd) == (row["calibration_margin"], row["calibration_margin_sd"]) and sd > 0
        here = scores[:, :classes.n_seen].max(1).astype(float) - scores[:, classes.n_seen:].max(1)
        assert mean_seen_margin(scores, classes.n_seen) == pytest.approx(here.mean())
        def held(ratio: float) -> float:  # within 10x either way
            return min(max(ratio, 0.1), 10.0)

        if mean > 0 and here.mean() > 0 and mean >= sd:  # a mean margin that is a scale: its units
            expected = gamma * held(here.mean() / mean)
        else:  # margins straddling zero: gamma's place among them, in standard deviations
            expected = here.mean() + (gamma - mean) * held(here.std() / sd)
        assert stats[method]["gamma"] == pytest.approx(expected, rel=1e-5)
        assert stats[method]["gamma_validation"] == chosen["calibration_gamma"]


def test_classic_methods_opt_in_and_join_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEVISE and SAE named in ``inject.methods`` (they are not in the default list): validate tries
    their grids, inject writes their checkpoints (every row from the compatibility model: the seen
    ones replaced, all biases 0), evaluate scores them and the comparison table lists them by label."""
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    root = tmp_path / "proj"
    _run_stages(root, {"methods": ["regression", "devise", "sae"], "devise_lr": [0.1, 1.0],
                       "bilinear_epochs": [2, 5], "sae_exponents": [-1, 0, 1]})
    choices = json.loads((root / "validation.json").read_text())
    assert [r["setting"] for r in choices["grid"] if r["method"] == "devise"] == [
        {"lr": lr, "epochs": e} for lr in (0.1, 1.0) for e in (2, 5)]
    assert [r["setting"] for r in choices["grid"] if r["method"] == "sae"] == [{"lam": 0.1}, {"lam": 1.0},
                                                                            {"lam": 10.0}]
    assert set(choices["choices"]["devise"]) == {"lr", "epochs", *CALIBRATION}
    assert set(choices["choices"]["sae"]) == {"lam", *CALIBRATION}
    injected = root / "injected"
    assert sorted(p.name for p in injected.glob("*.pt")) == ["devise.pt", "regression.pt", "sae.pt"]
    base, _ = load_checkpoint(root / "finetuned.pt")
    for name in ("devise", "sae"):
        net, meta = load_checkpoint(injected / f"{name}.pt")
        w, b = net.classifier.weight.detach(), net.classifier.bias.detach()
        assert meta.method == name and w.shape == (len(meta.class_names), base.classifier.weight.shape[1])
        assert not torch.equal(w[:base.classifier.weight.shape[0]], base.classifier.weight.detach())
        assert torch.equal(b, torch.zeros_like(b))
    for name in ("regression", "devise", "sae"):
        assert set(json.loads((root / "gzsl" / f"{name}.json").read_text())) == {
            "S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"}
    table = (root / "plots" / "comparison.md").read_text()
    assert all(f"| {label} |" in table for label in ("ridge regression", "DEVISE", "SAE"))

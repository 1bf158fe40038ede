"""The pieces of the class-disjoint validation protocol (``validate``): the validation problem, the
candidate grids, the choices file, and the scoring of one setting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from niwt.config.load import parse_params
from niwt.data.tables import ClassTable, SplitTable, read_classes, subproblem, write_classes
from niwt.evaluation.gzsl import mean_seen_margin, transfer_gamma, validation_numbers
from niwt.evaluation.metrics import gzsl_metrics
from niwt.injection.methods import candidates, chosen_mapping, setting_names
from niwt.io.choices import ChoicesError, Reading, read_choices, write_choices
from niwt.models.finetuning import initial_model
from niwt.models.networks import ModelError, build_model
from niwt.params import InjectParams, MappingParams


def _tables() -> tuple[ClassTable, SplitTable]:
    names = ["a", "b", "c", "d", "u1", "u2"]
    classes = ClassTable(names, 4, np.eye(6, dtype=np.float32), "attributes", [f"x{i}" for i in range(6)],
                         [f"class {n}" for n in names])
    cls = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5])
    split = np.array(["train", "val", "test_seen"] * 4 + ["test_unseen"] * 2)
    return classes, SplitTable(np.arange(14) + 100, [f"img{i}.png" for i in range(14)], cls, split)


def test_subproblem_remaps_classes_and_holds_no_test_image() -> None:
    classes, splits = _tables()
    sub_c, sub_s = subproblem(classes, splits, np.array([0, 2, 3]), np.array([1]))
    assert sub_c.names == ["a", "c", "d", "b"] and sub_c.n_seen == 3
    assert np.array_equal(sub_c.domain, np.eye(6, dtype=np.float32)[[0, 2, 3, 1]])
    assert sub_c.descriptions == ["class a", "class c", "class d", "class b"]
    # no test_seen / test_unseen image of the real problem; b's train and val images are its unseen
    assert sub_s.image_id.tolist() == [100, 101, 103, 104, 106, 107, 109, 110]
    assert sub_s.class_id.tolist() == [0, 0, 3, 3, 1, 1, 2, 2]
    assert sub_s.split.tolist() == ["train", "val", "test_unseen", "test_unseen", "train", "val", "train", "val"]
    assert sub_s.path == [f"img{i - 100}.png" for i in sub_s.image_id]


def test_grids_in_order() -> None:
    cfg = InjectParams(lr=(0.001, 0.01), lambda_=(0.1,), ridge_alpha=(1.0, 10.0), eszsl_exponents=(-1, 2))
    mapping = MappingParams(lr=(0.01, 0.1), weight_decay=(0.0,), candidate_epochs=(5, 10))
    niwt = candidates("niwt", cfg, mapping)
    assert niwt == [{"mapping_lr": m, "mapping_weight_decay": 0.0, "mapping_epochs": e, "lr": lr, "lambda": 0.1}
                    for m in (0.01, 0.1) for e in (5, 10) for lr in (0.001, 0.01)]
    assert [list(s) for s in niwt] == [["mapping_lr", "mapping_weight_decay", "mapping_epochs", "lr", "lambda"]] * 8
    assert candidates("regression", cfg, mapping) == [{"alpha": 1.0}, {"alpha": 10.0}]
    assert candidates("eszsl", cfg, mapping) == [{"alpha": 0.1, "gamma": 0.1}, {"alpha": 0.1, "gamma": 100.0},
                                                 {"alpha": 100.0, "gamma": 0.1}, {"alpha": 100.0, "gamma": 100.0}]
    assert candidates("icis", cfg, mapping) == [{}]


def test_setting_names_and_the_chosen_map_come_from_the_registry() -> None:
    """``inject`` checks a choice by the names the method's grid holds; ``fit_mapping`` trains the
    map chosen with the first method that needs the forward map (none: the first candidates and the
    held-out rule)."""
    cfg = InjectParams()
    assert setting_names("niwt", cfg) == {"mapping_lr", "mapping_weight_decay", "mapping_epochs", "lr", "lambda"}
    assert setting_names("eszsl", cfg) == {"alpha", "gamma"} and setting_names("icis", cfg) == set()
    niwt = {"mapping_lr": 0.01, "mapping_weight_decay": 0.0, "mapping_epochs": 20, "lr": 0.1}
    assert chosen_mapping({"regression": {"alpha": 1.0}, "niwt": niwt}) == {"lr": 0.01, "weight_decay": 0.0,
                                                                             "epochs": 20}
    assert chosen_mapping({"regression": {"alpha": 1.0}, "icis": {}}) is None


def test_default_eszsl_grid_spans_gamma_1e_minus_3_to_1e6() -> None:
    """The default ESZSL grid runs from at most 10^-3 to at least 10^6, in order: a grid ending at
    10^3 picks gamma = 1000, its own edge."""
    exps = parse_params({}).inject.eszsl_exponents
    assert min(exps) <= -3 and max(exps) >= 6 and list(exps) == sorted(exps)


def test_validation_numbers_pick_the_gamma_that_maximises_h() -> None:
    # 2 seen classes, 1 unseen; the unseen score is always 1 below the best seen one
    scores = np.array([[3.0, 0.0, 2.0], [0.0, 3.0, 2.0], [3.0, 0.0, 2.5], [0.0, 3.0, 2.5]])
    y = np.array([0, 1, 2, 2])
    out = validation_numbers(scores, y, 2)
    assert out["H"] == 0.0 and out["U"] == 0.0 and out["S"] == 1.0
    assert 0.5 < out["gamma"] < 1.0 and out["cal_H"] == 1.0  # between the two flips: all right
    again = gzsl_metrics(scores, y, np.array([True, True, False]), y >= 2, gamma=out["gamma"])
    assert again["H"] == out["cal_H"]
    assert out["seen_margin"] == 1.0 and out["seen_margin_sd"] == 0.0  # both seen images: best seen 3, unseen 2


def _margins(m: list[float]) -> np.ndarray:
    """Scores of seen-class images over 2 seen + 1 unseen class whose seen margins are ``m``."""
    m = np.asarray(m, dtype=float)
    return np.stack([m + 1.0, np.zeros_like(m), np.ones_like(m)], axis=1)


def test_gamma_is_carried_in_units_of_the_mean_seen_margin_where_it_is_a_scale() -> None:
    """gamma 2.5 against seen margins of mean 2.5 (sd 1.12, so the mean is a scale) on the
    validation problem is one margin; on a network whose seen images lead by 3x as much (mean 7.5)
    it is 7.5, not 2.5. The ratio is held within a factor 10."""
    val = _margins([1.0, 2.0, 3.0, 4.0])
    assert mean_seen_margin(val, 2) == 2.5
    final = _margins([3.0, 6.0, 9.0, 12.0])
    sd = float(np.std([1.0, 2.0, 3.0, 4.0]))
    assert transfer_gamma(2.5, 2.5, sd, final, 2) == pytest.approx(7.5)
    assert transfer_gamma(-1.0, 2.5, sd, final, 2) == pytest.approx(-3.0)  # a gamma favouring the seen rows too
    assert transfer_gamma(2.5, 2.0, 1.0, final * 1e3, 2) == pytest.approx(25.0)  # ratio 3750: held at 10
    assert transfer_gamma(2.5, 1e4, 1.0, final, 2) == pytest.approx(0.25)
    assert transfer_gamma(2.5, 2.5, sd, final[:0], 2) == 2.5  # no held-out seen image: nothing to measure
    assert math.isnan(mean_seen_margin(final[:0], 2))


def test_margins_that_straddle_zero_carry_gamma_as_a_z_score() -> None:
    """A mean margin below its spread (or not positive on either network) is no scale: gamma keeps
    its place among the margins, in standard deviations from their mean. NIWT's calibrated setting
    on the default had mean 0.48, sd 3.8: the ratio rule would scale gamma by the ratio of two
    numbers near zero."""
    def margins(m: list[float]) -> np.ndarray:  # any sign: best seen m, best unseen 0
        return np.stack([np.asarray(m), np.full(len(m), -1e6), np.zeros(len(m))], axis=1)

    final = margins([-2.0, 0.0, 2.0, 8.0])  # mean 2, sd 3.74
    here_sd = float(np.std([-2.0, 0.0, 2.0, 8.0]))
    # validation: mean 0.5 < sd 2; gamma -1.5 is one sd below the mean: one sd below here too
    assert transfer_gamma(-1.5, 0.5, 2.0, final, 2) == pytest.approx(2.0 - here_sd)
    assert transfer_gamma(0.5, 0.5, 2.0, final, 2) == pytest.approx(2.0)  # at the mean: at the mean
    # a negative mean margin (the unseen rows lead) on either side: the same z-score
    assert transfer_gamma(-3.0, -1.0, 2.0, final, 2) == pytest.approx(2.0 - here_sd)
    assert transfer_gamma(1.0, 2.0, 1.0, margins([-1.0, -3.0]), 2) == pytest.approx(-2.0 + (1.0 - 2.0) * 1.0)
    # the spread ratio is held within 10x either way
    assert transfer_gamma(1.5, -0.5, 0.1, final, 2) == pytest.approx(2.0 + 2.0 * 10)
    assert transfer_gamma(1.5, -0.5, 1e3, final, 2) == pytest.approx(2.0 + 2.0 * 0.1)
    # the boundary: a mean equal to its spread is a scale (the ratio), just below it is not (the z-score)
    assert transfer_gamma(1.5, 2.0, 2.0, final, 2) == pytest.approx(1.5 * 2.0 / 2.0)
    assert transfer_gamma(1.5, 2.0, 2.0001, final, 2) == pytest.approx(2.0 + (1.5 - 2.0) * here_sd / 2.0001)
    # one final image: a positive mean margin is still a scale; a negative one has no spread for the z-score
    assert transfer_gamma(1.5, 2.0, 1.0, final[3:], 2) == pytest.approx(1.5 * 8.0 / 2.0)
    assert transfer_gamma(1.5, 0.5, 2.0, final[:1], 2) == 1.5
    # nothing to carry it by (no validation spread for the z-score, or a margin that is not finite): as chosen
    assert transfer_gamma(1.5, -0.5, 0.0, final, 2) == 1.5 and transfer_gamma(1.5, float("nan"), 2.0, final, 2) == 1.5
    assert transfer_gamma(1.5, 0.5, 2.0, final[:0], 2) == 1.5


def test_choices_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "validation.json"
    write_choices(path, {"classes": ["b"], "class_disjoint": True, "mapping_epochs": 10,
                         "choices": {"niwt": {"mapping_epochs": 10, "lr": 0.01, "lambda": 0.001,
                                              "calibration_gamma": -0.5, "calibration_margin": 0.75,
                                              "calibration_margin_sd": 2.0},
                                     "icis": {"calibration_gamma": 2.0, "calibration_margin": 5.0,
                                              "calibration_margin_sd": 1.0}},
                         "grid": []})
    c = read_choices(path)
    assert c.hyper == {"niwt": {"mapping_epochs": 10.0, "lr": 0.01, "lambda": 0.001}, "icis": {}}
    assert c.gamma == {"niwt": -0.5, "icis": 2.0} and c.mapping_epochs == 10 and c.class_disjoint
    assert c.margin == {"niwt": 0.75, "icis": 5.0} and c.spread == {"niwt": 2.0, "icis": 1.0}
    c.require(["niwt", "icis"], {"niwt": {"mapping_epochs", "lr", "lambda"}, "icis": set()})
    with pytest.raises(ChoicesError, match=r"validation\.json: the choice of 'niwt' lacks \['init'\]"):
        c.require(["niwt"], {"niwt": {"lr", "init"}})
    with pytest.raises(ChoicesError, match=r"validation\.json: no validated choice for \['eszsl'\]"):
        c.require(["niwt", "eszsl"])
    for doc, pattern in (("{", "not valid JSON"), ('{"version": 0, "choices": {}}', "version 3"),
                         ('{"version": 2, "choices": {}}', "version 3"),  # before calibration_margin_sd
                         ('{"version": 3, "choices": {"niwt": {"lr": "x", "calibration_gamma": 0}}}',
                          "choices of 'niwt' must map names to numbers"),
                         ('{"version": 3, "choices": {"niwt": {"lr": 1}}}',
                          r"lack \['calibration_gamma', 'calibration_margin', 'calibration_margin_sd'\]; "
                          "rerun `dvc repro validate`"),
                         ('{"version": 3, "choices": {}, "mapping_epochs": 0}', "positive integer")):
        path.write_text(doc)
        with pytest.raises(ChoicesError, match=pattern):
            read_choices(path)
    with pytest.raises(FileNotFoundError, match="dvc repro validate"):
        read_choices(tmp_path / "missing.json")


def test_a_calibrated_reading_of_its_own_is_read_checked_and_falls_back(tmp_path: Path) -> None:
    """``calibrated_choices``: NIWT's calibrated reading under its own setting; a method without one
    reads both from its one choice; one naming another forward map or other names is refused."""
    path = tmp_path / "validation.json"
    niwt = {"mapping_epochs": 10, "lr": 0.01, "lambda": 0.001, "calibration_gamma": -0.5, "calibration_margin": 0.75,
            "calibration_margin_sd": 2.0}
    doc = {"choices": {"niwt": niwt, "icis": {"calibration_gamma": 2.0, "calibration_margin": 5.0,
                                              "calibration_margin_sd": 1.0}},
           "calibrated_choices": {"niwt": {**niwt, "lambda": 0.01, "calibration_gamma": 0.25,
                                           "calibration_margin": 0.5, "calibration_margin_sd": 3.0}}}
    write_choices(path, doc)
    c = read_choices(path)
    assert c.calibrated("niwt") == Reading({"mapping_epochs": 10.0, "lr": 0.01, "lambda": 0.01}, 0.25, 0.5, 3.0)
    assert c.hyper["niwt"]["lambda"] == 0.001 and c.gamma["niwt"] == -0.5  # the rows as shipped: unchanged
    assert c.calibrated("icis") == Reading({}, 2.0, 5.0, 1.0)
    assert c.separate("niwt") and not c.separate("icis")
    # the same setting (even with another gamma): one set of rows, one calibration, as validate writes a tie
    write_choices(path, {**doc, "calibrated_choices": {"niwt": {**niwt, "calibration_gamma": 9.0}}})
    assert not read_choices(path).separate("niwt") and read_choices(path).calibrated("niwt").gamma == -0.5
    write_choices(path, {"choices": doc["choices"]})  # a file without any (version 2 before them)
    assert read_choices(path).calibrated_choices is None and not read_choices(path).separate("niwt")
    for own, pattern in (({"eszsl": niwt}, "must map validated methods"), ([niwt], "must map validated methods"),
                         ({"niwt": {**niwt, "mapping_epochs": 20}}, "same hyperparameters and forward map"),
                         ({"niwt": {**niwt, "init": 1.0}}, "same hyperparameters and forward map"),
                         ({"niwt": {"lr": 0.01}}, r"calibrated_choices of 'niwt' lack \['calibration_gamma'"),
                         ({"niwt": {**niwt, "lr": "x"}}, "calibrated_choices of 'niwt' must map names to numbers")):
        write_choices(path, {**doc, "calibrated_choices": own})
        with pytest.raises(ChoicesError, match=r"validation\.json: .*" + pattern):
            read_choices(path)


def _grid_row(setting: dict, H: float, cal_H: float) -> dict:
    return {"method": "niwt", "setting": setting, "H": H, "cal_H": cal_H, "ausuc": 0.5,
            "calibration_gamma": cal_H, "calibration_margin": 1.0, "calibration_margin_sd": 1.0}


def test_the_calibrated_reading_is_chosen_by_calibrated_h_on_the_chosen_forward_map() -> None:
    """Chosen by H, a method's calibrated reading gets the best calibrated H among the settings on its
    forward map (a better one on another map is out of reach: inject builds on one map); a tie keeps
    the chosen setting; a choice made by calibrated H, AUSUC or a held-out signal serves both."""
    from niwt.evaluation.selection import choose
    from niwt.stages.validate import _calibrated_choice

    def s(epochs: int, lam: float) -> dict:
        return {"mapping_lr": 0.01, "mapping_weight_decay": 0.0, "mapping_epochs": epochs, "lr": 0.01, "lambda": lam}

    rows = [_grid_row(s(10, 1e-4), 0.60, 0.70), _grid_row(s(10, 1e-3), 0.40, 0.80),
            _grid_row(s(10, 1e-2), 0.50, 0.75), _grid_row(s(20, 1e-3), 0.30, 0.95)]
    first = choose(rows, "H")
    assert first.criterion == "H" and first.row is rows[0]
    second = _calibrated_choice(rows, first)
    assert second is not None and second.criterion == "cal_H" and second.row is rows[1]
    tie = [_grid_row(s(10, 1e-4), 0.20, 0.50), _grid_row(s(10, 1e-3), 0.60, 0.50)]
    assert _calibrated_choice(tie, choose(tie, "H")).row is tie[1]  # not the first of equals: the chosen one
    assert _calibrated_choice(rows, choose(rows, "cal_H")) is None
    flat = [_grid_row(s(10, 1e-4), 0.01, 0.30), _grid_row(s(10, 1e-3), 0.02, 0.60)]
    assert choose(flat, "H").criterion == "cal_H" and _calibrated_choice(flat, choose(flat, "H")) is None


def test_calibrated_scores_read_the_checkpoints_own_rows() -> None:
    from niwt.evaluation.gzsl import calibrated_scores
    from niwt.models.checkpoint import CheckpointMeta

    feats = np.array([[1.0, 2.0], [0.0, -1.0]], dtype=np.float32)
    shipped = np.zeros((2, 3), dtype=np.float32)
    meta = CheckpointMeta("smallcnn", ("a", "b", "u"), 2, 32)
    assert calibrated_scores(meta, feats, shipped, "x.pt") is shipped
    rows = {"weight": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), "bias": torch.tensor([0.0, 0.5, -1.0]),
            "setting": {"lambda": 0.01}}
    own = calibrated_scores(meta.replace(calibrated_rows=rows), feats, shipped, "x.pt")
    np.testing.assert_array_equal(own, [[1.0, 2.5, 2.0], [0.0, -0.5, -2.0]])
    bad = {**rows, "weight": torch.ones(2, 2)}
    with pytest.raises(ModelError, match=r"x\.pt: its calibrated reading's rows do not fit its classifier "
                                         r"\(3 classes x 2 features\); rerun inject"):
        calibrated_scores(meta.replace(calibrated_rows=bad), feats, shipped, "x.pt")


def test_the_comparison_names_the_setting_of_each_reading() -> None:
    from niwt.evaluation.report import settings_markdown

    md = settings_markdown({"regression": ({"alpha": 0.3}, None), "icis": ({}, None),
                            "niwt": ({"lr": 0.01, "lambda": 0.0001}, {"lr": 0.01, "lambda": 0.01})})
    assert md.splitlines() == ["| method | as shipped (S, U, H, AUSUC, zsl_top1) | calibrated (cal_*) |",
                               "|---|---|---|",
                               "| NIWT | lr 0.01, lambda 0.0001 | lr 0.01, lambda 0.01 |",
                               "| ICIS | (no hyperparameters) | the same |",
                               "| ridge regression | alpha 0.3 | the same |"]


def test_class_table_carries_the_dataset_validation_classes(tmp_path: Path) -> None:
    classes, _ = _tables()
    write_classes(tmp_path / "plain.parquet", classes)
    assert read_classes(tmp_path / "plain.parquet").validation is None
    marked = ClassTable(*[getattr(classes, f) for f in ("names", "n_seen", "domain", "domain_kind",
                                                           "attribute_names", "descriptions")], np.array([1, 3]))
    write_classes(tmp_path / "marked.parquet", marked)
    assert read_classes(tmp_path / "marked.parquet").validation.tolist() == [1, 3]
    bad = ClassTable(*[getattr(classes, f) for f in ("names", "n_seen", "domain", "domain_kind",
                                                        "attribute_names", "descriptions")], np.array([4]))
    write_classes(tmp_path / "bad.parquet", bad)
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'validation' marks unseen classes \['u1'\]"):
        read_classes(tmp_path / "bad.parquet")


def test_validation_backbone_keeps_only_its_rows_of_a_given_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("smallcnn", 4, width=4, hidden=8, image_size=16)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")
    m = parse_params({"model": {"weights": str(tmp_path / "w.pt"), "class_names": str(tmp_path / "names.txt"),
                                "width": 4, "hidden": 8, "image_size": 16}}).model
    sub = initial_model(m, ["d", "b"], allow_extra=True)
    assert torch.equal(sub.classifier.weight, net.classifier.weight[[3, 1]])
    assert torch.equal(sub.classifier.bias, net.classifier.bias[[3, 1]])
    with pytest.raises(ModelError, match="2 rows name no seen class"):
        initial_model(m, ["d", "b"])


def test_ridge_uses_the_validated_alpha() -> None:
    """The row builders use the ridge alpha validate chose, not a fixed alpha = 1."""
    from niwt.injection.context import Context, Partition
    from niwt.injection.methods import build_classifier
    from niwt.models.networks import NiwtNet
    from niwt.peers.regression import fit_ridge, predict_rows

    classes, splits = _tables()
    classes = dataclasses.replace(classes, domain=np.random.default_rng(0).uniform(0, 1, (6, 6)).astype(np.float32))
    torch.manual_seed(0)
    net = NiwtNet(torch.nn.Identity(), torch.nn.Linear(3, 4))
    part = Partition(np.arange(4), np.array([4, 5]))

    def rows(alpha: float) -> torch.Tensor:
        ctx = Context(net, InjectParams(), 0, classes, splits, None, 8, torch.device("cpu"),
                      hyper={"regression": {"alpha": alpha}})
        weight, _, _ = build_classifier(ctx, "regression", part)
        assert torch.equal(weight[:4], net.classifier.weight)  # the seen rows are kept as they are
        return weight[4:]

    small, large = rows(0.01), rows(100.0)
    assert not torch.allclose(small, large)
    targets = torch.cat([net.classifier.weight, net.classifier.bias[:, None]], 1).detach().double().numpy()
    dom = classes.domain / np.linalg.norm(classes.domain, axis=1, keepdims=True)
    coef, intercept = fit_ridge(dom[:4], targets, alpha=100.0)
    expected = predict_rows(dom[4:], coef, intercept)[:, :-1]
    np.testing.assert_allclose(large.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="no 'alpha' chosen for 'regression_rescaled'"):
        build_classifier(Context(net, InjectParams(), 0, classes, splits, None, 8, torch.device("cpu"),
                                 hyper={"regression": {"alpha": 1.0}}), "regression_rescaled", part)
@pytest.mark.parametrize(("n_seen", "count"), [(150, 50), (40, 13), (645, 213), (10, 5), (6, 4), (3, 1)])
def test_validation_split_is_sized_like_the_protocol(n_seen: int, count: int) -> None:
    """A third of the seen classes (Xian et al.: CUB 50 of 150, AWA2 13 of 40), at least 5 where the
    seen classes allow, always 2 left to fit."""
    from niwt.data.tables import validation_count

    assert validation_count(n_seen, 0.33, 5) == count


def test_validation_needs_three_seen_classes() -> None:
    from niwt.data.tables import validation_count
    from niwt.errors import ParamsError

    with pytest.raises(ParamsError, match="at least 3 seen classes"):
        validation_count(2, 0.33, 5)


def test_own_validation_classes_leaving_one_class_to_fit_are_refused() -> None:
    """The dataset's own validation classes may not leave a 1-class validation backbone (it would
    train to 100 % and validate nothing); seeded leaves two."""
    from niwt.errors import InputError
    from niwt.stages.finetune_validation import validation_classes

    p = parse_params({})
    table = ClassTable(list("abcd"), 3, np.ones((4, 1), np.float32), "attributes", ["x"], [""] * 4,
                       np.array([0, 1]))
    with pytest.raises(InputError, match=r"own validation classes \(2 of its 3 seen classes\) leave 1 class .* "
                                         r"set validate\.classes: seeded"):
        validation_classes(table, p)
    held, source = validation_classes(table, dataclasses.replace(p, validate=dataclasses.replace(
        p.validate, classes="seeded")))
    assert source == "seeded" and len(held) == 1
    table = dataclasses.replace(table, n_seen=4, names=list("abcde"), domain=np.ones((5, 1), np.float32),
                                descriptions=[""] * 5)
    assert validation_classes(table, p)[1] == "dataset"

"""Validation of ``params.yaml`` into frozen dataclasses (``niwt.params``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from niwt.config.load import load_params, parse_params
from niwt.errors import ParamsError
from niwt.params import InjectParams, Params, section_dict

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_loads() -> None:
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.model.arch == "smallcnn" and p.extract.layer == "auto"
    assert p.inject.lambda_ == pytest.approx((1e-4, 1e-3, 1e-2)) and all(isinstance(v, float) for v in p.inject.lambda_)
    assert isinstance(p.inject.methods, tuple) and "niwt" in p.inject.methods
    assert p.extract.pooling in ("sum", "mean")
    assert p.data.synthetic.n_unseen < p.data.synthetic.n_classes
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.inject.lr = (1.0,)  # type: ignore[misc]


def test_empty_document_gives_defaults() -> None:
    from niwt.injection.registry import OPT_IN, defaults

    # empty list: every registered method but the opt-in ones (the classic compatibility models)
    default = dataclasses.replace(Params().inject, methods=defaults())
    assert parse_params(None) == dataclasses.replace(Params(), inject=default)
    assert parse_params({}) == parse_params(None)
    assert parse_params({"inject": {"methods": []}}).inject.methods == defaults()
    assert not OPT_IN & set(defaults())
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        parse_params([1, 2])  # type: ignore[arg-type]


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"inject": {"lamda": 0.1}}, "my.yaml")
    msg = str(err.value)
    assert msg.startswith("my.yaml.inject: unknown key 'lamda'")
    assert "'lambda'" in msg and "'lambda_'" not in msg and "'max_iters'" in msg
    with pytest.raises(ParamsError, match=r"my\.yaml: unknown key 'injection'.*'inject'"):
        parse_params({"injection": {}}, "my.yaml")
    with pytest.raises(ParamsError, match=r"data\.synthetic: unknown key 'n_clases'"):
        parse_params({"data": {"synthetic": {"n_clases": 3}}})


@pytest.mark.parametrize("raw,pattern", [
    ({"finetune": {"epochs": "12"}}, r"finetune\.epochs: expected an integer, got str '12'"),
    ({"finetune": {"epochs": True}}, r"finetune\.epochs: expected an integer, got bool True"),
    ({"finetune": {"epochs": 1.5}}, r"finetune\.epochs: expected an integer"),
    ({"data": {"download": 1}}, r"data\.download: expected true/false, got int 1"),
    ({"data": {"download": "yes"}}, r"data\.download: expected true/false"),
    ({"inject": {"lr": "x"}}, r"inject\.lr\[0\]: expected a number, got 'x'"),
    ({"inject": {"lr": True}}, r"inject\.lr\[0\]: expected a number, got bool"),
    ({"inject": {"lr": [0.1, None]}}, r"inject\.lr\[1\]: expected a number"),
    ({"inject": {"lr": {"a": 1}}}, r"inject\.lr: expected a list"),
    ({"inject": {"lr": []}}, r"inject\.lr: give at least one candidate"),
    ({"inject": {"eszsl_exponents": [1.5]}}, r"inject\.eszsl_exponents\[0\]: expected an integer"),
    ({"mapping": {"candidate_epochs": [10, 61]}}, r"mapping\.candidate_epochs: each must be between 1 and"),
    ({"validate": {"classes": "xlsa"}}, r"validate\.classes: 'xlsa' is not one of"),
    ({"extract": {"layer": 4}}, r"extract\.layer: expected a string, got int 4"),
    ({"inject": {"methods": "niwt"}}, r"inject\.methods: expected a list"),
    ({"inject": {"methods": ["niwt", 3]}}, r"inject\.methods\[1\]: expected a string"),
    ({"data": {"synthetic": 5}}, r"data\.synthetic: expected a mapping, got int 5"),
    ({"model": "vgg16"}, r"model: expected a mapping"),
])
def test_wrong_types(raw: dict, pattern: str) -> None:
    with pytest.raises(ParamsError, match=pattern):
        parse_params(raw)


def test_numeric_conversions() -> None:
    p = parse_params({"inject": {"lr": "1e-5", "lambda": 0, "methods": ["niwt", "icis"]}})
    assert p.inject.lr == (1e-5,) and isinstance(p.inject.lr[0], float)  # YAML's 1e-5 is a string
    assert p.inject.lambda_ == (0.0,) and isinstance(p.inject.lambda_[0], float)  # one number: a fixed candidate
    assert p.inject.methods == ("niwt", "icis")


def test_literal_violation() -> None:
    with pytest.raises(ParamsError, match=r"extract\.pooling: 'max' is not one of \['sum', 'mean'\]"):
        parse_params({"extract": {"pooling": "max"}})
    with pytest.raises(ParamsError, match=r"model\.arch: 'vgg99' is neither smallcnn nor a torchvision"):
        parse_params({"model": {"arch": "vgg99"}})
    assert parse_params({"model": {"arch": "convnext_tiny"}}).model.arch == "convnext_tiny"
    with pytest.raises(ParamsError, match=r"finetune.mode: none keeps a classifier you trained"):
        parse_params({"finetune": {"mode": "none"}})
    with pytest.raises(ParamsError, match=r"set model.class_names"):
        parse_params({"model": {"weights": "my.pth"}})
    with pytest.raises(ParamsError, match=r"inject\.solver"):
        parse_params({"inject": {"solver": "adam"}})


def test_lambda_keyword_maps_to_field() -> None:
    assert parse_params({"inject": {"lambda": 0.25}}).inject.lambda_ == (0.25,)
    assert section_dict(parse_params({"inject": {"lambda": [0.25]}}).inject)["lambda"] == "0.25"


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("inject:\n  lambda: 1.0e-3\n  lr: 0.001\n")
    p = load_params(path, {"inject.lambda": 0.0, "data.synthetic.n_classes": 20,
                           "model.arch": "vgg16"})
    assert p.inject.lambda_ == (0.0,) and p.inject.lr == (0.001,)
    assert p.data.synthetic.n_classes == 20 and p.data.synthetic.n_unseen == 10
    assert p.model.arch == "vgg16"
    with pytest.raises(ParamsError, match=r"inject: unknown key 'lamda'"):
        load_params(path, {"inject.lamda": 0.0})


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inject: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty) == parse_params({})
    typo = tmp_path / "typo.yaml"
    typo.write_text("mapping:\n  epoch: 3\n")
    with pytest.raises(ParamsError, match=rf"{typo}\.mapping: unknown key 'epoch'"):
        load_params(typo)


@pytest.mark.parametrize("raw,pattern", [
    ({"data": {"synthetic": {"n_classes": 10, "n_unseen": 10}}}, "n_unseen must be between 1 and n_classes - 1"),
    ({"data": {"synthetic": {"n_classes": 10, "n_unseen": 12}}}, "n_unseen must be between"),
    ({"data": {"synthetic": {"n_unseen": 0}}}, "n_unseen must be between"),
    ({"data": {"val_fraction": 0.5, "test_seen_fraction": 0.5}}, r"val_fraction \+ data\.test_seen_fraction"),
    ({"inject": {"batch_size": 0}}, r"inject\.batch_size must be positive"),
    ({"mapping": {"epochs": -1}}, r"mapping\.epochs must be positive"),
    ({"inject": {"methods": ["niwt", "foo", "bar"]}}, r"inject\.methods: unknown \['bar', 'foo'\]"),
    # steps and penalties that train to NaN weights, refused before any work
    ({"finetune": {"lr_full": -1.0}}, r"p\.yaml: finetune\.lr_full must be between 1e-12 and 1000, got -1\.0"),
    ({"finetune": {"lr": 0.0}}, r"finetune\.lr must be between 1e-12 and 1000, got 0\.0"),
    ({"finetune": {"lr_full": 1e30}}, r"finetune\.lr_full must be between 1e-12 and 1000, got 1e\+30"),
    ({"finetune": {"weight_decay": -1.0}}, r"finetune\.weight_decay must be between 0 and 1000, got -1\.0"),
    ({"finetune": {"label_smoothing": 5.0}}, r"finetune\.label_smoothing must be between 0 and 1, got 5\.0"),
    ({"inject": {"min_improvement": -0.5}}, r"inject\.min_improvement must be between 0 and 1, got -0\.5"),
])
def test_range_checks(raw: dict, pattern: str) -> None:
    with pytest.raises(ParamsError, match=pattern):
        parse_params(raw, "p.yaml")


def test_range_checks_report_all_problems() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"inject": {"batch_size": 0, "methods": ["zzz"]}, "mapping": {"batch_size": 0}}, "p.yaml")
    msg = str(err.value)
    assert msg.startswith("p.yaml: ")
    assert "inject.batch_size" in msg and "mapping.batch_size" in msg and "'zzz'" in msg


def test_section_dict_flattening() -> None:
    p = parse_params({"inject": {"lambda": 0.5, "methods": ["niwt", "eszsl"]}})
    inj = section_dict(p.inject)
    assert inj["lambda"] == "0.5" and "lambda_" not in inj
    assert inj["methods"] == "niwt,eszsl"
    assert set(inj) == {"lambda" if f.name == "lambda_" else f.name for f in dataclasses.fields(InjectParams)}
    data = section_dict(p.data)
    assert data["synthetic.n_classes"] == 50 and data["synthetic.clutter"] == 0.3
    assert data["name"] == "synthetic" and "synthetic" not in data
    full = section_dict(p)
    assert full["inject.lambda"] == "0.5" and full["data.synthetic.n_unseen"] == 10
    assert full["base.seed"] == 0


def test_execution_settings_come_from_the_environment_and_flags() -> None:
    from niwt.config.runtime import load_runtime
    from niwt.params import Runtime

    assert load_runtime({}, terminal=True) == Runtime()
    # bars only on a terminal, unless NIWT_PROGRESS says otherwise (pipes, log files, Prefect logs)
    assert not load_runtime({}, terminal=False).progress
    assert load_runtime({"NIWT_PROGRESS": "1"}, terminal=False).progress
    rt = load_runtime({"NIWT_DEVICE": "cpu", "NIWT_WORKERS": "3", "NIWT_RUNNER": "dask",
                       "NIWT_DASK_ADDRESS": "tcp://h:8786", "NIWT_DASK_WORKERS": "4", "NIWT_PROGRESS": "0"})
    assert rt == Runtime("cpu", 3, "dask", "tcp://h:8786", 4, False)
    assert load_runtime({"NIWT_WORKERS": "3"}, {"workers": 1, "device": None}).workers == 1  # a flag wins
    with pytest.raises(ParamsError, match="NIWT_WORKERS: expected an integer, got 'many'"):
        load_runtime({"NIWT_WORKERS": "many"})
    with pytest.raises(ParamsError, match=r"device: 'gpu' is not one of \['auto', 'cpu', 'cuda'\]"):
        load_runtime({"NIWT_DEVICE": "gpu"})
    with pytest.raises(ParamsError, match="NIWT_PROGRESS: expected 1/0/true/false"):
        load_runtime({"NIWT_PROGRESS": "maybe"})
    with pytest.raises(ParamsError, match=r"NIWT_WORKERS \(or --workers\) must be between 0 and 512, got -1"):
        load_runtime({"NIWT_WORKERS": "-1"})
    with pytest.raises(ParamsError, match=r"NIWT_WORKERS \(or --workers\) must be between 0 and 512, got 100000"):
        load_runtime({}, {"workers": 100000})


def test_speed_only_settings_are_execution_settings_not_params() -> None:
    """Batch size, shard size and memory format change no number: NIWT_* variables or flags, so
    switching them never reruns a stage (and the validation grid)."""
    from niwt.config.runtime import load_runtime

    for section, key in (("extract", "batch_size"), ("extract", "shard_size"), ("extract", "channels_last"),
                         ("inject", "feature_batch_size"), ("explain", "batch_size"), ("evaluate", "batch_size")):
        with pytest.raises(ParamsError, match="unknown"):
            parse_params({section: {key: 1}})
    rt = load_runtime({"NIWT_BATCH_SIZE": "32", "NIWT_SHARD_SIZE": "7", "NIWT_CHANNELS_LAST": "0"})
    assert (rt.inference_batch("importances"), rt.inference_batch("features"), rt.shard_size, rt.channels_last) \
        == (32, 32, 7, False)
    rt = load_runtime({})
    assert (rt.inference_batch("importances"), rt.inference_batch("features"), rt.shard_size, rt.channels_last) \
        == (64, 128, 512, True)
    with pytest.raises(ParamsError, match="NIWT_SHARD_SIZE"):
        load_runtime({"NIWT_SHARD_SIZE": "0"})


@pytest.mark.parametrize("over", [{"data": {"name": "xlsa17"}}, {"model": {"arch": "mlp"}}])
def test_features_and_the_network_over_them_come_together(over) -> None:
    """Refused when params are read (before the first stage), not at finetune."""
    from niwt.config.load import parse_params

    with pytest.raises(ParamsError, match=r"precomputed features \(data\.name: xlsa17\) are read by model\.arch: mlp"):
        parse_params(over)
    assert parse_params({"data": {"name": "xlsa17"}, "model": {"arch": "mlp"}}).model.arch == "mlp"

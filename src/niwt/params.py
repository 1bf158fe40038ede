"""Typed, frozen views of ``params.yaml``.

Every hyperparameter of the pipeline lives in ``params.yaml``; each stage reads its sections once,
here, into frozen dataclasses and passes typed values down. Unknown keys and wrong types fail loudly
with the file and the key named, because a silently ignored typo in a sweep costs a GPU-day.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ParamsError(ValueError):
    """A params file that does not match the schema (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class BaseParams:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class SyntheticParams:
    """Knobs of the embedded generated benchmark (see ``niwt.data.synthetic``)."""

    n_classes: int = 50
    n_unseen: int = 10
    images_per_class: int = 100
    image_size: int = 64
    dominant_prob: float = 0.9
    clutter: float = 0.3


@dataclass(frozen=True)
class DataParams:
    name: Literal["synthetic", "awa2", "cub", "sun"] = "synthetic"
    root: str = "data/raw/synthetic"
    domain: Literal["attributes", "attributes_binary", "sentences", "text"] = "attributes"
    val_fraction: float = 0.1
    test_seen_fraction: float = 0.2
    bad_images: Literal["fail", "skip"] = "fail"
    download: bool = False
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["smallcnn", "vgg16", "resnet101"] = "smallcnn"
    layer: str = "body.block4"
    pretrained: bool = False
    width: int = 32
    hidden: int = 256
    image_size: int = 64


@dataclass(frozen=True)
class FinetuneParams:
    mode: Literal["fixed", "full"] = "full"
    epochs: int = 12
    head_epochs: int = 0
    batch_size: int = 64
    lr: float = 0.003
    lr_full: float = 0.001
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    num_workers: int = 0
    amp: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class ExtractParams:
    pooling: Literal["sum", "mean"] = "sum"
    target: Literal["ground_truth", "predicted"] = "ground_truth"
    batch_size: int = 64
    shard_size: int = 512
    channels_last: bool = True
    runner: Literal["local", "dask"] = "local"
    dask_address: str = ""
    dask_workers: int = 2


@dataclass(frozen=True)
class MappingParams:
    epochs: int = 60
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    n_val_classes: int = 5
    selection: Literal["rank_corr", "val_loss"] = "rank_corr"


@dataclass(frozen=True)
class InjectParams:
    methods: tuple[str, ...] = ("niwt",)
    lr: float = 0.001
    lambda_: float = 1e-3
    batch_size: int = 64
    max_iters: int = 3000
    patience: int = 40
    min_improvement: float = 0.01
    pool: Literal["train", "noise"] = "train"
    pool_size: int = 1024
    solver: Literal["auto", "jacobian", "double_backprop"] = "auto"
    init: Literal["seen_centered", "mean"] = "seen_centered"


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 128


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "niwt"


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    mapping: MappingParams = field(default_factory=MappingParams)
    inject: InjectParams = field(default_factory=InjectParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)


# YAML keys that are Python keywords map to a trailing-underscore field.
_KEYWORD_FIELDS = {"lambda": "lambda_"}


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Validate ``value`` against a type hint and return it converted (lists -> tuples)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(hint, value, where)
    if origin is Literal:
        if value not in get_args(hint):
            raise ParamsError(f"{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = get_args(hint)[:1]
        return tuple(_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _check_value(value, option, where)
            except ParamsError:
                continue
        raise ParamsError(f"{where}: {value!r} matches none of {get_args(hint)}")
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"{where}: expected null, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        # YAML reads ``1e-5`` (no dot) as a string; accept numeric strings for floats only.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError as err:
                raise ParamsError(f"{where}: expected a number, got {value!r}") from err
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported type hint {hint!r} at {where}")  # programming error, not user error


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = _KEYWORD_FIELDS.get(key, key)
        if name not in names or key in _KEYWORD_FIELDS.values():
            valid = sorted(next((k for k, v in _KEYWORD_FIELDS.items() if v == n), n) for n in names)
            raise ParamsError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        kwargs[name] = _check_value(value, hints[name], f"{where}.{key}")
    return cls(**kwargs)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Build :class:`Params` from a parsed YAML mapping, validating every key and type.

    Args:
        raw: the YAML document (sections may be missing: defaults apply).
        source: name used in error messages, normally the file path.

    Raises:
        ParamsError: on unknown keys, wrong types or values outside a declared choice.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    params = _build(Params, raw, source)
    _check_ranges(params, source)
    return params


def _check_ranges(p: Params, source: str) -> None:
    """Value checks that types cannot express."""
    s = p.data.synthetic
    problems = []
    if not 0 < s.n_unseen < s.n_classes:
        problems.append("data.synthetic.n_unseen must be between 1 and n_classes - 1")
    if not 0.0 < p.data.val_fraction + p.data.test_seen_fraction < 1.0:
        problems.append("data.val_fraction + data.test_seen_fraction must be in (0, 1)")
    for name in ("finetune.batch_size", "extract.batch_size", "extract.shard_size", "mapping.batch_size",
                 "inject.batch_size", "evaluate.batch_size", "finetune.epochs", "mapping.epochs"):
        section, key = name.split(".")
        if getattr(getattr(p, section), key) <= 0:
            problems.append(f"{name} must be positive")
    unknown = set(p.inject.methods) - {"niwt", "icis", "regression", "regression_rescaled", "eszsl"}
    if unknown:
        problems.append(f"inject.methods: unknown {sorted(unknown)}; valid: niwt icis regression "
                        "regression_rescaled eszsl")
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems))


class _DuplicateKey(Exception):
    """Raised inside the YAML loader; load_params turns it into a ParamsError naming the file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"{key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file.

    Args:
        path: the YAML file.
        overrides: dotted keys to set after reading (``{"inject.lambda": 0.0}``), for tests and tools.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as err:
        raise ParamsError(f"{path}:{err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: cannot be read as UTF-8 text ({err})") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_params(raw, str(path))


def section_dict(section: Any) -> dict[str, Any]:
    """Flatten a params section to ``{"key": value}`` for logging (nested keys dotted)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = next((k for k, v in _KEYWORD_FIELDS.items() if v == f.name), f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{key}.{k}": v for k, v in section_dict(value).items()})
        elif isinstance(value, tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = value
    return out

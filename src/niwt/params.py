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


from niwt.errors import InputError, ParamsError  # noqa: F401  (re-exported for callers)


@dataclass(frozen=True)
class BaseParams:
    seed: int = 0


@dataclass(frozen=True)
class SyntheticParams:
    """Knobs of the embedded generated benchmark (see ``niwt.data.synthetic``)."""

    n_classes: int = 50
    n_unseen: int = 10
    images_per_class: int = 100
    image_size: int = 64
    dominant_prob: float = 0.97
    clutter: float = 0.3


@dataclass(frozen=True)
class DataParams:
    name: Literal["synthetic", "awa2", "cub", "sun", "folder"] = "synthetic"
    root: str = "data/raw"
    download: bool = False
    domain: Literal["attributes", "attributes_binary", "sentences", "text"] = "attributes"
    val_fraction: float = 0.1
    test_seen_fraction: float = 0.2
    bad_images: Literal["fail", "skip"] = "fail"
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class CacheParams:
    enabled: bool = True  # decoded-image cache (the cache stage); false: stages decode the image files


@dataclass(frozen=True)
class ModelParams:
    """The network that ``finetune`` builds and trains (the importance layer belongs to ``extract``)."""

    arch: str = "smallcnn"  # or any torchvision classification model (torchvision.models.list_models)
    weights: str = "none"  # none | imagenet | path of a state_dict (or .safetensors) the user trained
    class_names: str = ""  # with a weights file: text file, one class per classifier row, in row order
    width: int = 32
    hidden: int = 256
    image_size: int = 64


@dataclass(frozen=True)
class FinetuneParams:
    mode: Literal["fixed", "full", "none"] = "full"
    head_epochs: int = 0
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.003
    lr_full: float = 0.003
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    amp: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class ExtractParams:
    """What an importance is: the layer, the pooling and the target class. Downstream stages read
    the layer and pooling from the importances' metadata, never from here."""

    layer: str = "body.block4"
    pooling: Literal["sum", "mean"] = "sum"
    target: Literal["ground_truth", "predicted"] = "ground_truth"
    batch_size: int = 64
    shard_size: int = 512
    channels_last: bool = True
    allow_degenerate: bool = False  # accept a layer with no nonlinearity above it (NIWT degenerates)


@dataclass(frozen=True)
class MappingParams:
    epochs: int = 60
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    n_val_classes: int = 5
    selection: Literal["rank_corr", "val_loss"] = "rank_corr"
    candidate_epochs: tuple[int, ...] = (10, 20, 40, 60)


def _method_names() -> tuple[str, ...]:
    """Every method of the registry (``niwt.injection.registry``), in its order; imported lazily so
    reading params stays cheap."""
    from niwt.injection.registry import METHODS

    return tuple(METHODS)


@dataclass(frozen=True)
class InjectParams:
    methods: tuple[str, ...] = field(default_factory=_method_names)
    lr: tuple[float, ...] = (0.001, 0.01)
    lambda_: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    ridge_alpha: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    eszsl_exponents: tuple[int, ...] = (-3, -2, -1, 0, 1, 2, 3, 4, 5, 6)
    batch_size: int = 64
    max_iters: int = 3000
    patience: int = 40
    min_improvement: float = 0.01
    pool: str = "train"  # train | noise | a folder of images (searched recursively)
    pool_size: int = 1024
    solver: Literal["auto", "jacobian", "double_backprop"] = "auto"
    init: Literal["seen_centered", "mean"] = "seen_centered"
    feature_batch_size: int = 128


@dataclass(frozen=True)
class ValidateParams:
    classes: Literal["auto", "seeded"] = "auto"
    n_classes: int = 5
    finetune_epochs: int = 0
    criterion: Literal["H", "cal_H", "ausuc"] = "H"


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 128


@dataclass(frozen=True)
class ExplainParams:
    batch_size: int = 128
    images_per_class: int = 4
    top_attributes: int = 5


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "niwt"


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    cache: CacheParams = field(default_factory=CacheParams)
    model: ModelParams = field(default_factory=ModelParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    mapping: MappingParams = field(default_factory=MappingParams)
    inject: InjectParams = field(default_factory=InjectParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    explain: ExplainParams = field(default_factory=ExplainParams)
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
        if get_args(hint)[0] in (int, float) and not isinstance(value, (list, tuple, dict)):
            value = [value]  # a candidate list given one number: that number, fixed
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


# Bounds far beyond any real run, so that a typo (an extra digit, 1e30) fails at once instead of
# allocating petabytes or training forever. (low, high), inclusive; lower bounds of batch sizes and
# epochs are also checked above, with the "must be positive" message.
UPPER_BOUNDS: dict[str, tuple[int, int]] = {
    "data.synthetic.n_classes": (2, 10_000),
    "data.synthetic.images_per_class": (1, 100_000),
    "data.synthetic.image_size": (8, 2048),
    "model.image_size": (8, 2048),
    "model.width": (1, 4096),
    "model.hidden": (1, 65_536),
    "finetune.epochs": (0, 10_000),
    "finetune.head_epochs": (0, 10_000),
    "finetune.batch_size": (0, 65_536),
    "extract.batch_size": (0, 65_536),
    "extract.shard_size": (0, 10_000_000),
    "mapping.epochs": (0, 100_000),
    "mapping.batch_size": (0, 1_048_576),
    "mapping.n_val_classes": (0, 100_000),
    "inject.batch_size": (0, 65_536),
    "validate.n_classes": (1, 100_000),
    "validate.finetune_epochs": (0, 10_000),
    "inject.max_iters": (0, 10_000_000),
    "inject.patience": (1, 10_000_000),
    "inject.pool_size": (1, 10_000_000),
    "inject.feature_batch_size": (0, 65_536),
    "evaluate.batch_size": (0, 65_536),
    "explain.batch_size": (0, 65_536),
    "explain.images_per_class": (0, 10_000),
    "explain.top_attributes": (0, 100_000),
}
RUNTIME_BOUNDS = {"workers": ("NIWT_WORKERS", 0, 512), "dask_workers": ("NIWT_DASK_WORKERS", 1, 4096)}


def _check_ranges(p: Params, source: str) -> None:
    """Value checks that types cannot express."""
    s = p.data.synthetic
    problems = []
    if not 0 < s.n_unseen < s.n_classes:
        problems.append("data.synthetic.n_unseen must be between 1 and n_classes - 1")
    if not 0.0 < p.data.val_fraction + p.data.test_seen_fraction < 1.0:
        problems.append("data.val_fraction + data.test_seen_fraction must be in (0, 1)")
    for name in ("finetune.batch_size", "extract.batch_size", "extract.shard_size", "mapping.batch_size",
                 "inject.batch_size", "inject.feature_batch_size", "evaluate.batch_size", "explain.batch_size",
                 "explain.images_per_class", "explain.top_attributes", "finetune.epochs", "mapping.epochs"):
        section, key = name.split(".")
        if getattr(getattr(p, section), key) <= 0:
            problems.append(f"{name} must be positive")
    if not 0 <= p.base.seed <= 2**32 - 1:
        problems.append(f"base.seed must be between 0 and 2^32-1 = {2**32 - 1} (numpy and torch seeds), "
                        f"got {p.base.seed}")
    if p.finetune.head_epochs < 0:
        problems.append("finetune.head_epochs must be >= 0")
    for name, (low, high) in UPPER_BOUNDS.items():
        section, *middle, key = name.split(".")
        value = getattr(getattr(p, section), key) if not middle else getattr(getattr(getattr(p, section),
                                                                                      middle[0]), key)
        if value > high or value < low:
            problems.append(f"{name} must be between {low} and {high} (a real run never needs more), got {value}")
    if p.model.arch not in ("smallcnn", "vgg16", "resnet101"):
        import torchvision  # only for other architectures: reading the default params stays cheap

        archs = torchvision.models.list_models(module=torchvision.models)
        if p.model.arch not in archs:
            problems.append(f"model.arch: {p.model.arch!r} is neither smallcnn nor a torchvision classification "
                            f"model ({', '.join(sorted(archs))})")
    if p.finetune.mode == "none" and p.model.weights in ("none", "imagenet"):
        problems.append("finetune.mode: none keeps a classifier you trained: set model.weights to its state_dict "
                        "file (and model.class_names to its class list)")
    if p.model.weights not in ("none", "imagenet") and not p.model.class_names:
        problems.append("model.weights is a file: set model.class_names to a text file naming its classifier rows, "
                        "one class per line, in row order")
    problems += _grid_problems(p)
    valid = _method_names()
    unknown = set(p.inject.methods) - set(valid)
    if unknown:
        problems.append(f"inject.methods: unknown {sorted(unknown)}; valid: {' '.join(valid)}")
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems))


def _grid_problems(p: Params) -> list[str]:
    """The candidate lists ``validate`` chooses from: non-empty, in range."""
    problems = []
    grids = {"inject.lr": p.inject.lr, "inject.lambda": p.inject.lambda_, "inject.ridge_alpha": p.inject.ridge_alpha,
             "inject.eszsl_exponents": p.inject.eszsl_exponents, "mapping.candidate_epochs": p.mapping.candidate_epochs}
    for name, grid in grids.items():
        if not grid:
            problems.append(f"{name}: give at least one candidate (one value fixes it)")
        elif len(grid) > 64:
            problems.append(f"{name}: at most 64 candidates, got {len(grid)}")
    for name, grid, low, high in (("inject.lr", p.inject.lr, 0.0, 1e3), ("inject.lambda", p.inject.lambda_, 0.0, 1e9),
                                  ("inject.ridge_alpha", p.inject.ridge_alpha, 0.0, 1e12),
                                  ("inject.eszsl_exponents", p.inject.eszsl_exponents, -12, 12)):
        bad = [v for v in grid if not low <= v <= high]
        if bad:
            problems.append(f"{name}: candidates must be between {low} and {high}, got {bad}")
    bad = [e for e in p.mapping.candidate_epochs if not 1 <= e <= p.mapping.epochs]
    if bad:
        problems.append(f"mapping.candidate_epochs: each must be between 1 and mapping.epochs = {p.mapping.epochs}, "
                        f"got {bad}")
    return problems


class _DuplicateKey(Exception):
    """Raised inside the YAML loader; load_params turns it into a ParamsError naming the file."""


def _unique_key_loader() -> type:
    """A SafeLoader that refuses duplicate keys (plain YAML keeps the last one, silently) and aliases.
    Built on first use: importing niwt's core (networks, importance capture, injection) needs no PyYAML.

    Aliases (``*name``) are refused as soon as the first one is read: no params need them, and DVC,
    which reads ``params.yaml`` itself, expands every alias (a few nested ones, an "alias bomb",
    made ``dvc status`` grow past 4.7 GB).
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _DuplicateKey(f"{event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed in a "
                                    "params file (DVC expands every alias when it reads params: nested aliases take "
                                    "gigabytes); write the values out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(f"{key_node.start_mark.line + 1}: duplicate key {key!r}")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file.

    Args:
        path: the YAML file.
        overrides: dotted keys to set after reading (``{"inject.lambda": 0.0}``), for tests and tools.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader()) or {}
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


class _Undeclared:
    """A params section (or the undeclared keys of one) that a stage did not declare as a dependency.

    Reading it is a programming error: DVC would not rerun the stage when the value changes."""

    def __init__(self, stage: str, section: str, value: Any, allowed: frozenset[str]) -> None:
        self._stage, self._section, self._value, self._allowed = stage, section, value, allowed

    def __getattr__(self, name: str) -> Any:
        if name in self._allowed:
            return getattr(self._value, name)
        raise AttributeError(f"stage {self._stage!r} reads {self._section}.{name} but does not declare it "
                             "(niwt.stages.STAGES and dvc.yaml `params:`)")


def declared_view(params: Params, stage: str, keys: tuple[str, ...]) -> Params:
    """``params`` as a stage may see it: the sections and single keys it declares, nothing else.

    Args:
        keys: whole sections (``"mapping"``) or single keys (``"base.seed"``), as in ``dvc.yaml``.
    """
    view: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name in keys:
            view[f.name] = value
        else:
            allowed = frozenset(k.split(".", 1)[1] for k in keys if k.startswith(f.name + "."))
            view[f.name] = _Undeclared(stage, f.name, value, frozenset(_KEYWORD_FIELDS.get(k, k) for k in allowed))
    return types.SimpleNamespace(**view)  # type: ignore[return-value]


# Execution settings: where and how a stage runs, never what it computes. They are not in
# params.yaml (no stage lists them), so switching to a GPU, to Dask or to more loader workers
# never makes DVC rerun anything. Each comes from an environment variable (which `dvc repro`
# passes to its stages) and may be overridden by the matching `niwt` flag.
RUNTIME_ENV = {"device": "NIWT_DEVICE", "workers": "NIWT_WORKERS", "runner": "NIWT_RUNNER",
               "dask_address": "NIWT_DASK_ADDRESS", "dask_workers": "NIWT_DASK_WORKERS", "progress": "NIWT_PROGRESS"}


@dataclass(frozen=True)
class Runtime:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 0  # DataLoader worker processes (0: load in the main process)
    runner: Literal["local", "dask"] = "local"  # where extraction shards run
    dask_address: str = ""  # empty: a LocalCluster of dask_workers processes; else a scheduler address
    dask_workers: int = 2
    progress: bool = True


def _from_env(text: str, hint: Any, where: str) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ParamsError(f"{where}: expected 1/0/true/false, got {text!r}")
        return lowered in {"1", "true", "yes", "on"}
    if hint is int:
        try:
            return int(text)
        except ValueError as err:
            raise ParamsError(f"{where}: expected an integer, got {text!r}") from err
    return text


def load_runtime(environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Runtime:
    """The execution settings from ``NIWT_*`` environment variables, then ``overrides`` (CLI flags;
    None values are ignored)."""
    import os

    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(Runtime)
    raw: dict[str, Any] = {}
    for key, var in RUNTIME_ENV.items():
        if environ.get(var, "") != "":
            raw[key] = _from_env(environ[var], hints[key], var)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    runtime = _build(Runtime, raw, "execution settings (NIWT_* environment variables, niwt flags)")
    for key, (var, low, high) in RUNTIME_BOUNDS.items():
        value = getattr(runtime, key)
        if not low <= value <= high:
            flag = "--" + key.replace("_", "-")
            raise ParamsError(f"execution setting {var} (or {flag}) must be between {low} and {high}, got {value}")
    return runtime

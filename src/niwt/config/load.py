"""``params.yaml`` -> :class:`niwt.params.Params`: YAML reading, type checks, then the bounds.

Unknown keys and wrong types fail loudly with the file and the key named, because a silently
ignored typo in a sweep costs a GPU-day. Duplicate keys and YAML aliases are refused.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from niwt.config.bounds import check_bounds
from niwt.errors import ParamsError
from niwt.params import KEYWORD_FIELDS, Params


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Validate ``value`` against a type hint and return it converted (lists -> tuples)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return build(hint, value, where)
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


def build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = KEYWORD_FIELDS.get(key, key)
        if name not in names or key in KEYWORD_FIELDS.values():
            valid = sorted(next((k for k, v in KEYWORD_FIELDS.items() if v == n), n) for n in names)
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
    params = _with_default_methods(build(Params, raw, source))
    check_bounds(params, source)
    return params


def _with_default_methods(params: Params) -> Params:
    """``inject.methods`` left empty (or absent) means every registered method but the opt-in ones
    (:func:`niwt.injection.registry.defaults`), written out here so that each stage sees the explicit list."""
    if params.inject.methods:
        return params
    from niwt.injection.registry import defaults

    return dataclasses.replace(params, inject=dataclasses.replace(params.inject, methods=defaults()))


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


MAX_PARAMS_BYTES = 1 << 20  # the shipped params.yaml is 8 KiB


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
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {size / 2**20:.1f} MiB; a params file is a few KiB (limit "
                          f"{MAX_PARAMS_BYTES // 2**20} MiB): not a params file")
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

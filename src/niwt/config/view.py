"""What a stage may see of the params: exactly the sections and keys it declares in ``dvc.yaml``.

A stage that reads an undeclared key would go stale under DVC (the value changes, the stage does not
rerun), so reading one fails at once, naming the stage and the key.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from niwt.params import KEYWORD_FIELDS, Params


class _Undeclared:
    """A params section (or the undeclared keys of one) that a stage did not declare as a dependency.

    Reading it is a programming error: DVC would not rerun the stage when the value changes."""

    def __init__(self, stage: str, section: str, value: Any, allowed: frozenset[str]) -> None:
        self._stage, self._section, self._value, self._allowed = stage, section, value, allowed

    def __getattr__(self, name: str) -> Any:
        if name in self._allowed:
            return getattr(self._value, name)
        raise AttributeError(f"stage {self._stage!r} reads {self._section}.{name} but does not declare it "
                             "(niwt.pipeline.STAGES and dvc.yaml `params:`)")


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
            view[f.name] = _Undeclared(stage, f.name, value, frozenset(KEYWORD_FIELDS.get(k, k) for k in allowed))
    return types.SimpleNamespace(**view)  # type: ignore[return-value]

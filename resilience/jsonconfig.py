"""Build a dataclass from a JSON object, refusing what a typo or a wrong type would smuggle in.

Configs (`--config JSON`) and the worker's ``PUT /fault`` body all arrive as JSON objects and
all must fail loudly rather than silently run the defaults: unknown keys are errors, and each
value is checked against its field's annotation. Range checks stay in each dataclass's
``__post_init__``, which runs on every instance built here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

__all__ = ["coerce_field", "dataclass_from_json"]

D = TypeVar("D")


def dataclass_from_json(cls: type[D], data: Any, what: str, base: D | None = None) -> D:
    """An instance of dataclass `cls` from the JSON object `data`; all or nothing.

    `what` names the object in error messages ("gateway config", "GPU state"). With `base`,
    `data` is a partial update: the result is `base` with the given fields replaced.
    Raises ValueError naming the offending key and what it should have been.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    # get_type_hints resolves annotations that `from __future__ import annotations` left as text
    hints = typing.get_type_hints(cls)
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown {what} key(s): {', '.join(unknown)}; known keys: {', '.join(known)}"
        )
    try:
        values = {name: coerce_field(name, hints[name], value) for name, value in data.items()}
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


def coerce_field(name: str, annotation: Any, value: Any) -> Any:
    """Check one JSON value against a dataclass field type (int, float, bool, str, optional).

    JSON has one number type and Python's bool is an int; this keeps ``true`` out of int fields
    and lets ``1`` stand for ``1.0``.
    """
    allowed = (
        get_args(annotation)
        if get_origin(annotation) in (Union, types.UnionType)
        else (annotation,)
    )
    if value is None and type(None) in allowed:
        return None
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    expected = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ValueError(f"{name} must be {expected}, got {value!r}")

"""Typed reads of the free-form parts of a manifest (``verification``, artifact sections, a bench JSON).

Those parts are validated as JSON objects by ``manifest.read`` but not field by field: every value
is read here as what it must be, and anything else reads as missing, so a damaged or foreign field
shows as "not measured" instead of breaking the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_NONFINITE = {"inf": math.inf, "infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}


def num(value: Any) -> float | None:
    """A number (``to_jsonable`` writes non-finite floats as "inf", "-inf", "nan"), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _NONFINITE:
        return _NONFINITE[value.strip().lower()]
    return None


def finite(value: Any) -> float | None:
    """A finite number, or None."""
    number = num(value)
    return number if number is not None and math.isfinite(number) else None


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text(value: Any, default: str = "") -> str:
    """A string, or ``default`` (numbers are written out; containers are not text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return default


def obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through mappings, None where a level is missing."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value

"""Shared building blocks of the config models: durations and strict (typo-rejecting) models."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)"
_DURATION = re.compile(rf"^\s*(?:{_PART}\s*)+$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
FROM_TEXT = {"from_text": True}  # validation context of a config file (parse_config)


def parse_duration(value: object) -> float:
    """`250ms`, `5s`, `2m`, `1h`, `1h30m` (or, from code, a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in re.findall(_PART, value))
    else:
        raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def fmt(seconds: float) -> str:
    """5s, 2.5s, 250ms: a duration as the config file writes it (the inverse of parse_duration,
    so a detail names the timeout the way its author wrote it)."""
    return f"{round(seconds, 3):g}s" if seconds >= 1 else f"{round(seconds * 1000):d}ms"


def _duration(value: Any, info: ValidationInfo) -> float:
    """A Duration field: in a config file a bare number is ambiguous (`p95: 400`: 400 ms or
    400 s?), so the file must give the unit; code (no FROM_TEXT context) may pass seconds."""
    if (info.context or {}).get("from_text") and isinstance(value, int | float) and not (
            isinstance(value, bool)):
        raise ValueError(f"give a unit: {value!r} is {value}ms or {value}s? "
                         "(durations: 250ms, 5s, 2m, 1h30m)")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

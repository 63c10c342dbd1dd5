"""Shared building blocks of the config models: durations and strict (typo-rejecting) models."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """`250ms`, `5s`, `2m`, `1h` (or a bare number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def fmt(seconds: float) -> str:
    """5s, 2.5s, 250ms: a duration as the config file writes it (the inverse of parse_duration,
    so a detail names the timeout the way its author wrote it)."""
    return f"{round(seconds, 3):g}s" if seconds >= 1 else f"{round(seconds * 1000):d}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

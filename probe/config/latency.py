"""Latency targets in the config: `latency:` bounds on a measure's quantiles over a window.

Kept apart from the target's shape (probe.config.target) so probe.latency_window, which keeps
the windows these blocks describe, depends on this small module and not on the whole config.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from probe.config.base import Duration, Strict, parse_duration

__all__ = ["MAX_TIMED_WINDOW", "MAX_WINDOW", "MEASURES", "Latency", "LatencyTarget", "Measure",
           "latency_blocks"]

Measure = Literal["total", "handshake", "rtt", "ttfb"]
MEASURES: tuple[str, ...] = get_args(Measure)


MAX_WINDOW = 100_000  # samples a count window may keep
MAX_TIMED_WINDOW = 10_000  # samples a time window keeps at most (a fast probe fills it early)


class LatencyTarget(Strict):
    """Bounds on one measure's quantiles over a window: a sample count (`window: 100`) or a
    duration (`window: 5m`, the default: a spike leaves the verdict a few minutes after it
    ends, whatever the probe interval; a count at 15 s would keep it for 25 minutes)."""

    measure: str = "total"  # one of MEASURES or a step name of the target (Config checks)
    p50: Duration | None = None
    p95: Duration | None = None
    p99: Duration | None = None
    window: int | str = "5m"  # samples kept, or how long a sample is kept
    min_samples: int = Field(default=5, ge=1)

    @field_validator("window")
    @classmethod
    def _window(cls, v: int | str) -> int | str:
        if isinstance(v, bool) or (isinstance(v, int) and not 1 <= v <= MAX_WINDOW):
            raise ValueError(f"a sample count 1..{MAX_WINDOW} or a duration such as 5m, got"
                             f" {v!r}")
        if isinstance(v, str):
            try:
                parse_duration(v)
            except ValueError:
                raise ValueError(f"a sample count 1..{MAX_WINDOW} or a duration such as 5m,"
                                 f" got {v!r}") from None
        return v

    @property
    def span(self) -> float | None:
        """Seconds a sample stays in the window (None: a count window)."""
        return parse_duration(self.window) if isinstance(self.window, str) else None

    @property
    def count(self) -> int:
        """Samples the window keeps at most."""
        return self.window if isinstance(self.window, int) else MAX_TIMED_WINDOW

    def bounds(self) -> list[str]:
        """The quantiles bounded here: p50, p95, p99."""
        return [q for q in ("p50", "p95", "p99") if getattr(self, q) is not None]

    @model_validator(mode="after")
    def _some_bound(self) -> LatencyTarget:
        if self.p50 is None and self.p95 is None and self.p99 is None:
            raise ValueError("a latency target needs at least one of p50, p95, p99")
        if isinstance(self.window, int) and self.min_samples > self.window:
            raise ValueError("min_samples cannot exceed window")
        return self


def latency_blocks(v: Any) -> Any:
    """`latency:` is one block or a list of them; a list of one is that block."""
    if isinstance(v, list | tuple):
        return None if not v else v[0] if len(v) == 1 else tuple(v)
    return v


# One block, or several: the branch is chosen by the input's shape, so an error names the
# block's key (`targets[0].latency[1].p95`), not both branches. The tags hold a `[`, which a
# config error's place leaves out, as it does pydantic's own branch names.
Latency = Annotated[
    Annotated[LatencyTarget, Tag("[one]")] | Annotated[tuple[LatencyTarget, ...], Tag("[list]")],
    Discriminator(lambda v: "[list]" if isinstance(v, list | tuple) else "[one]"),
]

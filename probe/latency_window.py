"""Rolling latency windows and nearest-rank percentiles for one target (pure: no I/O, no clock).

Kept apart from readiness.py because it is a different job: readiness decides states from the
order of successes and failures; this keeps numbers and answers "is a quantile over its bound".

A window keeps the last `latency.window` samples (default 100) of every measure a *successful*
probe reported (`total` falls back to the probe's duration). Failed probes are judged by the
hysteresis; their durations (often just the timeout) would only blur the percentiles.
Percentiles are nearest-rank: the smallest sample with at least p% of the window at or below it,
so a reported p95 is a latency that was really observed, never an interpolation. No latency
verdict is given before `min_samples` samples.

The gate is re-judged on every probe result, so that path must be cheap: the judged measure's
window is kept also as a sorted list (updated by bisection: O(log n) search plus a short
memmove), and `breached()` reads only the configured bounds from it. `summary()` builds all the
quantiles and the detail string only when someone asks; both compare through `_over`, so they
can never disagree.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from probe.config import LatencyTarget
from probe.outcome import Outcome

QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
DEFAULT_WINDOW = 100


def percentile(samples: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (0 < p <= 100) of a non-empty collection."""
    return ranked(sorted(samples), p)


def ranked(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of samples already sorted (the hot path: no sorting here)."""
    if not ordered:
        raise ValueError("percentile of no samples")
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt_ms(ms: float) -> str:
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def _over(seconds: float, bound: float) -> bool:
    """Is a quantile over its bound, compared as reported (ms, 3 decimals)."""
    return round(seconds * 1000.0, 3) > bound * 1000.0


@dataclass
class LatencyWindows:
    """One target's windows, one per measure; only the judged `measure` keeps a sorted copy."""

    latency: LatencyTarget | None = None
    measure: str = "total"
    windows: dict[str, deque[float]] = field(default_factory=dict)
    ordered: list[float] = field(default_factory=list)  # windows[measure], sorted
    size: int = DEFAULT_WINDOW
    bounds: list[tuple[str, float, float]] = field(default_factory=list)  # (label, p, seconds)

    def __post_init__(self) -> None:
        self.configure(self.latency, self.measure)

    def configure(self, latency: LatencyTarget | None, measure: str) -> None:
        """Follow the target's (possibly new) latency target; config time only, keeps samples."""
        self.latency, self.measure = latency, measure
        self.bounds = ([(label, p, bound) for label, p in QUANTILES
                        if (bound := getattr(latency, label)) is not None] if latency else [])
        size = self.size = latency.window if latency else DEFAULT_WINDOW
        for name, window in self.windows.items():
            if window.maxlen != size:
                self.windows[name] = deque(window, maxlen=size)
        self.ordered = sorted(self.windows.get(measure, ()))

    def add(self, outcome: Outcome) -> None:
        """Take the samples of one successful probe."""
        latency = outcome.latency
        for measure, seconds in latency.items():
            self._push(measure, seconds)
        if "total" not in latency:
            self._push("total", outcome.duration)

    def _push(self, measure: str, seconds: float) -> None:
        window = self.windows.get(measure)
        if window is None:
            window = self.windows[measure] = deque(maxlen=self.size)
        if measure != self.measure:
            window.append(seconds)
            return
        ordered = self.ordered
        if len(window) == window.maxlen:  # the oldest sample leaves the sorted copy too
            oldest = window[0]
            i = bisect_left(ordered, oldest)
            if i < len(ordered) and ordered[i] == oldest:
                del ordered[i]
            else:  # only NaN (unordered) gets here: rebuild rather than drift
                window.append(seconds)
                self.ordered = sorted(window)
                return
        window.append(seconds)
        insort(ordered, seconds)

    def awaiting(self) -> bool:
        """True while there is a latency target but fewer than min_samples samples."""
        return self.latency is not None and len(self.ordered) < self.latency.min_samples

    def breached(self) -> bool:
        """Is any configured bound over (the per-result hot path: no strings, no sorting)."""
        lat = self.latency
        ordered = self.ordered
        if lat is None or len(ordered) < lat.min_samples:
            return False
        for _, p, bound in self.bounds:
            if _over(ranked(ordered, p), bound):
                return True
        return False

    def summary(self) -> tuple[dict[str, float], str | None]:
        """Window percentiles in ms (and target_pXX per bound), and a breach detail or None."""
        lat = self.latency
        ordered = self.ordered
        out: dict[str, float] = {}
        if ordered:
            for label, p in QUANTILES:
                out[label] = round(ranked(ordered, p) * 1000.0, 3)
        if lat is None:
            return out, None
        breaches = []
        for label, p, bound in self.bounds:
            out[f"target_{label}"] = round(bound * 1000.0, 3)
            if len(ordered) >= lat.min_samples and _over(ranked(ordered, p), bound):
                breaches.append(
                    f"{label} {fmt_ms(out[label])} over target {fmt_ms(bound * 1000.0)}")
        if not breaches:
            return out, None
        return out, f"{', '.join(breaches)} (measure {lat.measure}, {len(ordered)} samples)"

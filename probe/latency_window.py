"""Rolling latency windows and nearest-rank percentiles for one target (pure: no I/O, no clock).

Kept apart from readiness.py because it is a different job: readiness decides states from the
order of successes and failures; this keeps numbers and answers "is a quantile over its bound".

A target has one window per latency block (`latency:` is one block or a list), each of its own
measure, bounds and size, fed by every *successful* probe (`total` falls back to the probe's
duration). Failed probes are judged by the hysteresis; their durations (often just the timeout)
would only blur the percentiles. A window is a sample count (`window: 100`) or a duration
(`window: 5m`, the default): samples older than it are dropped by time, at the `now` readiness
passes in, so a 10 s spike leaves the verdict 5 minutes later whether the target is probed every
second or every 15 s (a count of 100 kept it 94 s at 1 s, 25 minutes at 15 s). A time window
still keeps at most config.MAX_TIMED_WINDOW samples: a fast probe cannot grow it without bound.
A target without a latency block keeps one window of `total` (5 minutes) for the status page.

Percentiles are nearest-rank: the smallest sample with at least p% of the window at or below it,
so a reported p95 is a latency that was really observed, never an interpolation. No latency
verdict is given before `min_samples` samples (per block).

The gate is re-judged on every probe result, so that path must be cheap: each window is kept
also as a sorted list (updated by bisection: O(log n) search plus a short memmove), and
`breached()` reads only the configured bounds from it. `summary()` builds all the quantiles and
the detail string only when someone asks; both compare through `_over`, so they can never
disagree.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Sequence

from probe.config.base import fmt
from probe.config.latency import MAX_TIMED_WINDOW, LatencyTarget
from probe.outcome import Outcome

QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
DEFAULT_SPAN = 300.0  # seconds: the window of a target without a latency block


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


class Window:
    """One block's samples of its measure, in arrival order and sorted."""

    __slots__ = ("bounds", "count", "measure", "min_samples", "ordered", "span", "spec",
                 "times", "values")

    def __init__(self, spec: LatencyTarget | None) -> None:
        self.spec = spec
        self.measure = spec.measure if spec else "total"
        self.span = spec.span if spec else DEFAULT_SPAN
        self.count = spec.count if spec else MAX_TIMED_WINDOW
        self.min_samples = spec.min_samples if spec else 1
        self.bounds = ([(label, p, bound) for label, p in QUANTILES
                        if (bound := getattr(spec, label)) is not None] if spec else [])
        self.times: deque[float] = deque()
        self.values: deque[float] = deque()
        self.ordered: list[float] = []

    def adopt(self, old: Window) -> None:
        """Keep `old`'s samples (a reload with the same measure), within this window's size."""
        self.times, self.values = deque(old.times), deque(old.values)
        while len(self.values) > self.count:
            self.times.popleft()
            self.values.popleft()
        self.ordered = sorted(self.values)

    def push(self, seconds: float, now: float | None) -> None:
        self.prune(now)
        if len(self.values) >= self.count:
            self._drop_oldest()
        self.times.append(now if now is not None else math.nan)
        self.values.append(seconds)
        insort(self.ordered, seconds)

    def prune(self, now: float | None) -> None:
        """Drop the samples older than the window's span at `now`."""
        if self.span is None or now is None:
            return
        oldest = now - self.span
        times = self.times
        while times and times[0] < oldest:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        self.times.popleft()
        value = self.values.popleft()
        ordered = self.ordered
        i = bisect_left(ordered, value)
        if i < len(ordered) and ordered[i] == value:
            del ordered[i]
        else:  # only NaN (unordered) gets here: rebuild rather than drift
            self.ordered = sorted(self.values)

    def awaiting(self) -> bool:
        return self.spec is not None and len(self.ordered) < self.min_samples

    def breached(self) -> bool:
        ordered = self.ordered
        if self.spec is None or len(ordered) < self.min_samples:
            return False
        return any(_over(ranked(ordered, p), bound) for _, p, bound in self.bounds)

    def breaches(self) -> list[str]:
        """`handshake p95 71ms > 50ms` per bound over (the detail's words)."""
        ordered = self.ordered
        if self.spec is None or len(ordered) < self.min_samples:
            return []
        return [f"{self.measure} {label} {fmt_ms(round(ranked(ordered, p) * 1000.0, 3))} > "
                f"{fmt_ms(bound * 1000.0)}"
                for label, p, bound in self.bounds if _over(ranked(ordered, p), bound)]

    def extent(self) -> str:
        """`12 samples in the last 5m` / `12 samples`: what a breach was judged over."""
        n = len(self.ordered)
        return f"{n} samples" + (f" in the last {_span(self.span)}" if self.span else "")


def _span(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else fmt(seconds)


class LatencyWindows:
    """One target's windows, one per latency block (or one `total` window without any)."""

    def __init__(self, blocks: Sequence[LatencyTarget] = ()) -> None:
        self.blocks: list[Window] = []
        self.configure(blocks)

    @property
    def ordered(self) -> list[float]:
        """The first window's samples, sorted (what the status page's percentiles show)."""
        return self.blocks[0].ordered

    @property
    def windows(self) -> dict[str, deque[float]]:
        """Each measure's samples, in arrival order (the first window of a measure)."""
        out: dict[str, deque[float]] = {}
        for w in self.blocks:
            out.setdefault(w.measure, w.values)
        return out

    def configure(self, blocks: Sequence[LatencyTarget]) -> None:
        """Follow the target's (possibly new) latency blocks; config time only. A window keeps
        the samples of the old window of the same measure and span."""
        old = {(w.measure, w.span): w for w in self.blocks}
        self.blocks = [Window(spec) for spec in blocks] or [Window(None)]
        for w in self.blocks:
            if (held := old.get((w.measure, w.span))) is not None:
                w.adopt(held)

    def add(self, outcome: Outcome, now: float | None = None) -> None:
        """Take the samples of one successful probe, seen at `now`."""
        latency = outcome.latency
        for w in self.blocks:
            seconds = latency.get(w.measure)
            if seconds is None and w.measure == "total":
                seconds = outcome.duration
            if seconds is not None:
                w.push(seconds, now)
            else:
                w.prune(now)

    def awaiting(self) -> bool:
        """True while some latency block has fewer than its min_samples samples."""
        return any(w.awaiting() for w in self.blocks)

    def breached(self) -> bool:
        """Is any configured bound over (the per-result hot path: no strings, no sorting)."""
        return any(w.breached() for w in self.blocks)

    def summary(self) -> tuple[dict[str, float], str | None]:
        """The first window's percentiles in ms (and target_pXX per bound of its block), and
        a breach detail naming every measure over its bound, or None."""
        first = self.blocks[0]
        ordered = first.ordered
        out: dict[str, float] = {}
        if ordered:
            for label, p in QUANTILES:
                out[label] = round(ranked(ordered, p) * 1000.0, 3)
        for label, _, bound in first.bounds:
            out[f"target_{label}"] = round(bound * 1000.0, 3)
        over = [f"{', '.join(said)} ({w.extent()})" for w in self.blocks
                if (said := w.breaches())]
        return out, "; ".join(over) if over else None

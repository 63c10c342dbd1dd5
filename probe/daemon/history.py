"""Recent results and state changes per target, kept in memory for the status page.

The page wants "what happened lately", not a time-series database, so this keeps a bounded tail
and nothing else. A probe result is a handful of numbers, stored column-wise in `array`s (about
31 bytes a result instead of ~300 for a tuple of Python objects). Per target we keep at most
`results` results and nothing older than `span`, whichever is smaller; and across all targets at
most `total_results` results, so a config with thousands of targets cannot grow the daemon
without bound: each target then gets an equal share (never less than `min_per_target`).

The share is computed from the configured number of targets (`from_config`, `reconfigure`), not
from the targets seen so far: if every target's first result changed everyone's share, start-up
would re-trim every stored target once per new target (quadratic: ~0.2 s of loop time at 2000
targets). Only when more targets turn up than announced (a History built without a count) do the
shares shrink, and then the announced count grows by an eighth or more at a time, so that stays
amortised O(1) per target at the price of shares up to ~11% below an exact split. A forgotten
target's share goes back to the others at the next `reconfigure`/`retain` (once per reload).

Pure data structure: no clock, no I/O. The daemon feeds it `record(outcome)` and
`transition(t)`; the server reads `snapshot(name, now, max_points)`, which downsamples so the page
gets a fixed-size chart whatever the probe interval.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Any

from probe.config import MEASURES
from probe.outcome import Failure, Outcome
from probe.readiness import Transition

_FAILURES = list(Failure)
_INDEX = {f: i for i, f in enumerate(_FAILURES)}
_DETAIL_MAX = 300  # details are one-liners; cap what a misbehaving peer makes us hold


class _Results:
    """One target's results: parallel arrays with a moving head, compacted now and then.

    Appends go to the end; dropping the oldest only moves `head`. When the dead prefix gets as long
    as the live part the arrays are sliced, so storage stays under ~2x the live results and every
    operation is amortised O(1).
    """

    __slots__ = ("at", "code", "duration", "fail", "head", "lat")

    def __init__(self) -> None:
        self.at = array("d")  # started_at, epoch seconds
        self.fail = array("b")  # index into Failure, -1 for a success
        self.code = array("H")  # HTTP status or WebSocket close code, 0 when none
        self.duration = array("f")  # seconds
        self.lat = [array("f") for _ in MEASURES]  # seconds, NaN when the probe did not measure it
        self.head = 0

    def __len__(self) -> int:
        return len(self.at) - self.head

    def columns(self) -> list[array[Any]]:
        return [self.at, self.fail, self.code, self.duration, *self.lat]

    def append(self, o: Outcome) -> None:
        self.at.append(o.started_at)
        self.fail.append(-1 if o.failure is None else _INDEX[o.failure])
        code = o.status_code if o.status_code is not None else o.close_code
        self.code.append(code if code is not None and 0 <= code <= 0xFFFF else 0)
        self.duration.append(o.duration)
        for col, measure in zip(self.lat, MEASURES, strict=True):
            col.append(o.latency.get(measure, math.nan))

    def trim(self, cap: int, oldest: float) -> None:
        """Drop results beyond the newest `cap` and those that started before `oldest`."""
        end = len(self.at)
        head = max(self.head, end - cap)
        while head < end and self.at[head] < oldest:
            head += 1
        self.head = head
        if (head > 64 and head * 2 > end) or (head == end and head > 0):
            for col in self.columns():
                del col[:head]
            self.head = 0

    def stored(self) -> int:
        """Array slots held, live or dead (what memory the target costs)."""
        return len(self.at)


class History:
    """Bounded recent history of every target, for /api/v1/status and the /status page."""

    def __init__(
        self,
        results: int = 1000,
        span: float = 3600.0,
        *,
        transitions: int = 100,
        total_results: int = 200_000,
        total_transitions: int = 20_000,
        min_per_target: int = 16,
        targets: int = 0,
    ) -> None:
        if results < 1 or span <= 0 or transitions < 1:
            raise ValueError("history needs results >= 1, span > 0 and transitions >= 1")
        self.results = results
        self.span = span
        self.transitions_per_target = transitions
        self.total_results = total_results
        self.total_transitions = total_transitions
        self.min_per_target = min_per_target
        self._results: dict[str, _Results] = {}
        self._changes: dict[str, deque[tuple[float, str, str, str | None, str]]] = {}
        self._latest: dict[str, float] = {}
        self._targets = max(targets, 0)  # how many targets the shares are computed for
        self._cap = self._result_cap(self._targets)
        self._ccap = self._change_cap(self._targets)

    @classmethod
    def from_config(cls, config: Any) -> History:
        """From `config.history` (results, span), with shares sized for `config.targets`."""
        return cls(results=config.history.results, span=config.history.span,
                   targets=len(config.targets))

    def reconfigure(self, results: int, span: float, targets: int | None = None) -> None:
        """New bounds (SIGHUP): trims at once, keeps what still fits.

        `targets` is the new config's target count; without it, the targets held now.
        """
        self.results, self.span = results, span
        self._targets = len(self._changes) if targets is None else max(targets, 0)
        self._rebalance(force=True)

    # --- bounds ----------------------------------------------------------------------------

    def _result_cap(self, targets: int) -> int:
        share = self.total_results // max(targets, 1)
        return max(1, min(self.results, max(share, self.min_per_target)))

    def _change_cap(self, targets: int) -> int:
        share = self.total_transitions // max(targets, 1)
        return max(1, min(self.transitions_per_target, max(share, 4)))

    def _rebalance(self, force: bool = False) -> None:
        """Recompute per-target shares for `_targets`; shrink every target at once. O(targets)."""
        n = max(self._targets, len(self._changes))
        cap, ccap = self._result_cap(n), self._change_cap(n)
        if cap == self._cap and ccap == self._ccap and not force:
            return
        self._cap, self._ccap = cap, ccap
        for name, res in self._results.items():
            res.trim(cap, self._latest.get(name, -math.inf) - self.span)
        for name, old in self._changes.items():
            if old.maxlen != ccap:
                self._changes[name] = deque(old, maxlen=ccap)

    def _admit(self, name: str) -> deque[tuple[float, str, str, str | None, str]]:
        """A target's first result or state change: O(1) unless more targets came than announced."""
        self._changes[name] = deque(maxlen=self._ccap)
        if len(self._changes) > self._targets:  # grow geometrically: amortised O(1) per target
            self._targets = max(len(self._changes), self._targets + max(16, self._targets // 8))
            self._rebalance()
        return self._changes[name]

    # --- feeding -----------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        name = outcome.target
        res = self._results.get(name)
        if res is None:
            res = self._results[name] = _Results()
            if name not in self._changes:
                self._admit(name)
        res.append(outcome)
        latest = max(self._latest.get(name, -math.inf), outcome.started_at)
        self._latest[name] = latest
        res.trim(self._cap, latest - self.span)

    def transition(self, t: Transition) -> None:
        changes = self._changes.get(t.target)
        if changes is None:
            changes = self._admit(t.target)
        failure = None if t.failure is None else str(t.failure)
        detail = t.detail if len(t.detail) <= _DETAIL_MAX else t.detail[: _DETAIL_MAX - 1] + "…"
        changes.append((t.at, str(t.old), str(t.new), failure, detail))

    def forget(self, name: str) -> None:
        """A target left the config: its history goes too.

        Its share goes to the others at the next `reconfigure` (once per reload, not once per
        removed target): until then the remaining targets simply keep their smaller shares.
        """
        self._results.pop(name, None)
        self._changes.pop(name, None)
        self._latest.pop(name, None)

    def retain(self, names: set[str] | frozenset[str]) -> None:
        """Forget every target not in `names` (the new config's targets), then rebalance once."""
        for name in [n for n in set(self._results) | set(self._changes) if n not in names]:
            self.forget(name)
        self._targets = len(names)
        self._rebalance()

    # --- reading -----------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._results or name in self._changes

    def count(self, name: str) -> int:
        res = self._results.get(name)
        return 0 if res is None else len(res)

    def stored(self) -> int:
        """Result slots held across all targets (for tests of the memory bound)."""
        return sum(r.stored() for r in self._results.values())

    def snapshot(
        self,
        name: str,
        now: float,
        max_points: int = 120,
        measure: str = "total",
        max_transitions: int = 20,
    ) -> dict[str, Any]:
        """The page's view of one target: downsampled points, totals and recent state changes.

        `points` are `[t, n, failures, latency_ms, failure]`, oldest first: up to `max_points`
        buckets of consecutive results; `t` is the newest start time in the bucket, `latency_ms`
        the worst of its `measure` (spikes must survive downsampling), `failure` the newest
        failure in it. Latencies are those of successes only, as in readiness's windows;
        `total` falls back to the probe's duration.
        `transitions` are the newest `max_transitions` state changes, newest first (older than
        `span` too: when a target went failing two hours ago is exactly what the page must say).
        """
        res = self._results.get(name)
        points: list[list[Any]] = []
        count = failures = 0
        if res is not None:
            res.trim(self._cap, now - self.span)
            count = len(res)
            if count:
                points, failures = _downsample(res, max(1, max_points), measure)
        changes = list(self._changes.get(name, ()))[-max_transitions:] if max_transitions else []
        return {
            "span": self.span,
            "measure": measure,
            "count": count,
            "failures": failures,
            "points": points,
            "transitions": [
                {"at": at, "old": old, "new": new, "failure": failure, "detail": detail}
                for at, old, new, failure, detail in reversed(changes)
            ],
        }


def _downsample(res: _Results, max_points: int, measure: str) -> tuple[list[list[Any]], int]:
    lat = res.lat[MEASURES.index(measure)] if measure in MEASURES else None
    start, end = res.head, len(res.at)
    n = end - start
    buckets = min(n, max_points)
    points: list[list[Any]] = []
    failures = 0
    for b in range(buckets):
        lo = start + b * n // buckets
        hi = start + (b + 1) * n // buckets
        fails = 0
        worst = -1.0
        last_failure: str | None = None
        for i in range(lo, hi):
            f = res.fail[i]
            if f >= 0:
                fails += 1
                last_failure = _FAILURES[f].value
                continue  # a failure's duration is often just the timeout: not a latency
            v = lat[i] if lat is not None else math.nan
            if math.isnan(v) and measure == "total":
                v = res.duration[i]
            if not math.isnan(v) and v > worst:
                worst = v
        failures += fails
        ms = round(worst * 1000, 2) if worst >= 0 else None
        points.append([round(res.at[hi - 1], 3), hi - lo, fails, ms, last_failure])
    return points, failures

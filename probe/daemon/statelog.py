"""The daemon's log of what changed, besides a target's state (logging.log_transition):

- a failing target whose cause changes (timeout, then HTTP 503) gets a line: the first cause is
  often not the one to act on, and without this line the log would keep showing the first;
- the gate's own changes: "staging ready" when the last critical target becomes ready, and
  "staging not ready" naming what blocks it, when the first does not stay ready;
- a target that becomes `stale` (no result for 2 x interval + timeout: probe.readiness). That
  happens when nothing happens, so no result can trigger the line: a timer does. The result
  that ends it is a transition from `stale`, logged as every transition is, with how long the
  target had been without a result.

Each line carries its reason in `message` (what Cloud Logging's summary shows), and the same
facts as fields. Per probe this is a dict lookup for failures, one boolean for the gate and
two dict lookups for staleness, so a healthy daemon logs nothing. At DEBUG
(PROBE_LOG_LEVEL=debug, `probe check -v`) every probe is a line too (log_probe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import structlog

from probe.logging import log_transition
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness, Transition

log = structlog.get_logger("probe.readiness")
SHOWN = 10  # blocking targets named in a gate line; the rest are counted
STALE_SLACK = 0.01  # seconds past a result's expiry before a timer looks: staleness is `>`


def log_probe(outcome: Outcome) -> None:
    """One DEBUG line for one probe, its result in `message`."""
    took = f"{outcome.duration * 1000:.0f}ms"
    if outcome.success:
        log.debug(f"probe {outcome.target}: ok in {took}", target=outcome.target, ok=True)
    else:
        log.debug(f"probe {outcome.target}: {outcome.failure}: {outcome.detail} ({took})",
                  target=outcome.target, ok=False, failure=str(outcome.failure),
                  trace_id=outcome.trace_id)


class StateLog:
    """`clock`: the wall clock the daemon gives Readiness (time.time); it turns on the staleness
    timers. Without it (results fed with made-up times) staleness is not watched."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._causes: dict[str, Failure | None] = {}  # failing target -> the cause last logged
        self._gate = False  # the gate as last logged: it starts not ready, so that is not logged
        self._slow: set[str] = set()  # targets whose latency verdict was last logged breached
        # decided once: the logging level is configured before the daemon is built
        self._debug = log.bind().is_enabled_for(logging.DEBUG)
        self._clock = clock
        # One timer per target, due when its last result stops counting. Why not a sweep of
        # every target each second: at 6 000 targets that is 6 000 checks a second to find
        # what is almost never there. A timer is not re-armed per result either (a cancel and
        # a heap push each time): when it fires on a target that had results meanwhile, it
        # re-arms for the newest one's expiry, so each target costs one callback per
        # interval + timeout at most, and a result costs two dict lookups.
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stale: dict[str, float] = {}  # target logged stale -> the time of its last result

    def after(self, outcome: Outcome, transition: Transition | None,
              readiness: Readiness) -> None:
        """Log what `outcome` changed; called with readiness.observe()'s answer."""
        name = outcome.target
        if self._debug:
            log_probe(outcome)
        last = self._stale.pop(name, None)
        if self._clock is not None and name not in self._timers:
            self._watch(name, readiness)
        if transition is not None:
            log_transition(transition, transition.at - last if last is not None else None)
            if transition.new == "failing":
                self._causes[name] = transition.failure
            else:
                self._causes.pop(name, None)
        elif outcome.failure is not None and name in self._causes and (
                self._causes[name] != outcome.failure):
            was = self._causes[name]
            self._causes[name] = outcome.failure
            why = f"{outcome.failure}: {outcome.detail}" if outcome.detail else str(
                outcome.failure)
            log.warning(f"target {name} is still failing, now {why}", target=name,
                        state="failing", failure=str(outcome.failure), was=str(was),
                        detail=outcome.detail, trace_id=outcome.trace_id)
        if outcome.success:  # only a success moves a latency window
            self._latency(name, readiness.latency_breach(name))
        gate = readiness.gate_open
        if gate != self._gate:
            self._gate = gate
            if gate:
                log.info("staging ready: every critical target is ready", gate="ready")
            else:
                blocking = readiness.blocking()
                named = ", ".join(blocking[:SHOWN])
                more = f" and {len(blocking) - SHOWN} more" if len(blocking) > SHOWN else ""
                log.warning(f"staging not ready: waiting on {named}{more}", gate="not ready",
                            blocking=blocking[:SHOWN], blocking_count=len(blocking))

    def _latency(self, name: str, breach: str | None) -> None:
        """A line when a target's latency verdict turns (breached) and when it turns back."""
        if breach is not None and name not in self._slow:
            self._slow.add(name)
            log.warning(f"target {name} latency over target: {breach}", target=name,
                        failure="latency", detail=breach)
        elif breach is None and name in self._slow:
            self._slow.discard(name)
            log.info(f"target {name} latency back within target", target=name, latency="ok")

    def _watch(self, name: str, readiness: Readiness) -> None:
        """Arm `name`'s timer for when its newest result stops counting."""
        until = readiness.fresh_until(name)
        if until is None or self._clock is None:  # gone, or restarted: a result re-arms it
            self._timers.pop(name, None)
            return
        delay = max(0.0, until - self._clock()) + STALE_SLACK
        self._timers[name] = asyncio.get_running_loop().call_later(
            delay, self._expired, name, readiness)

    def _expired(self, name: str, readiness: Readiness) -> None:
        """A timer is due: the target is stale unless a result came meanwhile (then re-arm)."""
        assert self._clock is not None
        now = self._clock()
        until = readiness.fresh_until(name)
        verdict = readiness.target(name, now) if until is not None and now > until else None
        if verdict is None or verdict.last_probe_at is None:
            self._watch(name, readiness)
            return
        del self._timers[name]  # until its next result: a stale target has nothing to time
        self._stale[name] = verdict.last_probe_at
        age = now - verdict.last_probe_at
        log.warning(f"target {name} is stale: {verdict.detail}", target=name, state="stale",
                    critical=verdict.critical, age=round(age, 1), detail=verdict.detail)

    def forget(self, names: set[str]) -> None:
        """Targets removed or restarted by a reload: their causes and timers go."""
        for name in names:
            self._causes.pop(name, None)
            self._slow.discard(name)
            self._stale.pop(name, None)
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """The daemon stops: no target is stale for want of probes it no longer runs."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

"""The daemon's log of what changed, besides a target's state (logging.log_transition):

- a failing target whose cause changes (timeout, then HTTP 503) gets a line: the first cause is
  often not the one to act on, and without this line the log would keep showing the first;
- the gate's own changes: "staging ready" when the last critical target becomes ready, and
  "staging not ready" naming what blocks it, when the first does not stay ready.

Each line carries its reason in `message` (what Cloud Logging's summary shows), and the same
facts as fields. Per probe this is a dict lookup for failures and one boolean for the gate, so a
healthy daemon logs nothing. At DEBUG (PROBE_LOG_LEVEL=debug, `probe check -v`) every probe is a
line too (log_probe).
"""

from __future__ import annotations

import logging

import structlog

from probe.logging import log_transition
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness, Transition

log = structlog.get_logger("probe.readiness")
SHOWN = 10  # blocking targets named in a gate line; the rest are counted


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
    def __init__(self) -> None:
        self._causes: dict[str, Failure | None] = {}  # failing target -> the cause last logged
        self._gate = False  # the gate as last logged: it starts not ready, so that is not logged
        self._slow: set[str] = set()  # targets whose latency verdict was last logged breached
        # decided once: the logging level is configured before the daemon is built
        self._debug = log.bind().is_enabled_for(logging.DEBUG)

    def after(self, outcome: Outcome, transition: Transition | None,
              readiness: Readiness) -> None:
        """Log what `outcome` changed; called with readiness.observe()'s answer."""
        name = outcome.target
        if self._debug:
            log_probe(outcome)
        if transition is not None:
            log_transition(transition)
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

    def forget(self, names: set[str]) -> None:
        """Targets removed by a reload: their causes are no longer tracked."""
        for name in names:
            self._causes.pop(name, None)
            self._slow.discard(name)

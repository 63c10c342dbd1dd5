"""Prometheus metrics with blackbox_exporter's names, so existing dashboards and alerts just work.

Everything lives on a registry of our own (never the global one), so tests and the demo can run
several daemons in one process. Label values are bounded: `target` is the target's name, the
others come from closed sets (Failure, phase names, measures), never from an error message.

Choices worth knowing:
- probe_failures_total has every failure label pre-initialised to 0 for each target, so
  `rate()` and `increase()` see a 0 -> 1 step instead of a series that appears out of nowhere.
  (`latency` stays 0 there: it is a window verdict, shown by probe_target_ready, not a probe
  result.)
- probe_scheduler_lag_seconds is a histogram, not a summary: dashboards want a p99 and
  `histogram_quantile(0.99, sum by (le) (rate(probe_scheduler_lag_seconds_bucket[5m])))` also
  aggregates across replicas, which summary quantiles cannot.
- The last-probe gauges (probe_success, probe_duration_seconds, status, phases) appear with a
  target's first result: before it, "absent" is honest where a 0 would claim a failure.
- Phases a probe did not reach are set to 0 (as blackbox_exporter does for an http:// URL's tls),
  so a failed probe never shows the previous probe's timings.
- `_created` series are disabled: they double the series count and no dashboard reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from probe import __version__
from probe.config import MEASURES, Target
from probe.outcome import Failure, Outcome

if TYPE_CHECKING:
    from probe.readiness import Verdict

disable_created_metrics()

HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
WS_PHASES = ("resolve", "connect", "handshake", "rtt")
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("success", "failure")
BOUNDS = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))  # quantile label -> LatencyTarget field


@dataclass
class _Gauges:
    """A target's last-probe gauges; they exist only once it has been probed (absent = unknown,
    where a 0 would claim a failure that never happened)."""

    success: Gauge
    duration: Gauge
    status: Gauge
    close: Gauge | None
    phases: dict[str, Gauge]


@dataclass
class _Children:
    """The labelled children of one target, so a probe's record() does no label lookups."""

    kind: str
    results: dict[str, Counter]
    failures: dict[str, Counter]
    gauges: _Gauges | None = None
    latency: dict[str, Histogram] = field(default_factory=dict)
    expiry: Gauge | None = None


class Metrics:
    def __init__(self, version: str = __version__) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        t = ["target"]
        self.success = Gauge("probe_success", "1 if the last probe succeeded", t, registry=r)
        self.duration = Gauge(
            "probe_duration_seconds", "how long the last probe took", t, registry=r
        )
        self.http_status = Gauge(
            "probe_http_status_code", "HTTP status of the last probe (0: none)", t, registry=r
        )
        self.http_phase = Gauge(
            "probe_http_duration_seconds", "duration of each HTTP phase of the last probe",
            ["target", "phase"], registry=r,
        )
        self.ssl_expiry = Gauge(
            "probe_ssl_earliest_cert_expiry", "unix time the earliest certificate expires",
            t, registry=r,
        )
        self.ws_status = Gauge(
            "probe_websocket_status_code", "HTTP status of the WebSocket upgrade (101: accepted)",
            t, registry=r,
        )
        self.ws_close = Gauge(
            "probe_websocket_close_code", "close code the session ended with (0: none)",
            t, registry=r,
        )
        self.ws_phase = Gauge(
            "probe_websocket_duration_seconds",
            "duration of each WebSocket phase of the last probe",
            ["target", "phase"], registry=r,
        )
        self.latency = Histogram(
            "probe_latency_seconds", "latency of each probe by measure (total|handshake|rtt|ttfb)",
            ["target", "measure"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.results = Counter(
            "probe_results", "probes by result (success|failure)", ["target", "result"],
            registry=r,
        )
        self.failures = Counter(
            "probe_failures", "failed probes by failure class", ["target", "failure"], registry=r
        )
        self.target_ready = Gauge(
            "probe_target_ready", "1 if the target counts as ready", t, registry=r
        )
        self.gate_ready = Gauge(
            "probe_gate_ready", "1 if every critical target is ready", registry=r
        )
        self.build_info = Gauge(
            "probe_build_info", "stageprobe's own version", ["version"], registry=r
        )
        self.lag = Histogram(
            "probe_scheduler_lag_seconds", "how late probes start against their schedule",
            buckets=LAG_BUCKETS, registry=r,
        )
        # The target's config as series, so alerts and dashboards can compare against it
        # (issue 5): the latency bounds, and which targets gate readiness.
        self.latency_target = Gauge(
            "probe_latency_target_seconds",
            "configured latency bound by measure and quantile (0.5|0.95|0.99)",
            ["target", "measure", "quantile"], registry=r,
        )
        self.target_critical = Gauge(
            "probe_target_critical", "1 if the target gates readiness (critical: true)", t,
            registry=r,
        )
        self.build_info.labels(version).set(1)
        self._children: dict[str, _Children] = {}

    def add_target(self, target: Target) -> None:
        """Create a target's counters at 0 and its config series (at start and on reload)."""
        self._describe(target)
        current = self._children.get(target.name)
        if current is not None and current.kind == target.kind:
            return
        if current is not None:  # same name, other kind (http <-> ws): other series
            self.forget(target.name)
            self._describe(target)
        name = target.name
        self._children[name] = _Children(
            kind=target.kind,
            results={r: self.results.labels(name, r) for r in RESULTS},
            failures={f.value: self.failures.labels(name, f.value) for f in Failure},
        )

    def _gauges(self, target: Target) -> _Gauges:
        name = target.name
        ws = target.kind == "websocket"
        phase_metric, phases = (self.ws_phase, WS_PHASES) if ws else (self.http_phase, HTTP_PHASES)
        return _Gauges(
            success=self.success.labels(name),
            duration=self.duration.labels(name),
            status=(self.ws_status if ws else self.http_status).labels(name),
            close=self.ws_close.labels(name) if ws else None,
            phases={p: phase_metric.labels(name, p) for p in phases},
        )

    def record(self, outcome: Outcome, target: Target) -> None:
        c = self._children.get(target.name)
        if c is None:  # a kind change (http <-> ws) is not checked here: Daemon.apply re-adds it
            self.add_target(target)
            c = self._children[target.name]
        g = c.gauges
        if g is None:
            g = c.gauges = self._gauges(target)
        g.success.set(1 if outcome.success else 0)
        g.duration.set(outcome.duration)
        g.status.set(outcome.status_code or 0)
        if g.close is not None:
            g.close.set(outcome.close_code or 0)
        for phase, gauge in g.phases.items():
            gauge.set(outcome.phases.get(phase, 0.0))
        for measure, seconds in outcome.latency.items():
            hist = c.latency.get(measure)
            if hist is None:
                hist = c.latency[measure] = self.latency.labels(target.name, measure)
            hist.observe(seconds)
        if outcome.cert_expiry is not None:
            if c.expiry is None:
                c.expiry = self.ssl_expiry.labels(target.name)
            c.expiry.set(outcome.cert_expiry)
        c.results["success" if outcome.success else "failure"].inc()
        if outcome.failure is not None:
            c.failures[outcome.failure.value].inc()

    def _describe(self, target: Target) -> None:
        """Export the target's latency bounds and criticality, replacing earlier ones."""
        self.target_critical.labels(target.name).set(1 if target.critical else 0)
        self._undescribe(target.name)
        lat = target.latency
        if lat is not None:
            for quantile, attr in BOUNDS:
                bound = getattr(lat, attr)
                if bound is not None:
                    self.latency_target.labels(target.name, lat.measure, quantile).set(bound)

    def set_readiness(self, verdict: Verdict) -> None:
        for tv in verdict.targets:
            self.target_ready.labels(tv.name).set(1 if tv.ready else 0)
        self.gate_ready.set(1 if verdict.ready else 0)

    def observe_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def forget(self, target_name: str) -> None:
        """Remove every series of a target that is no longer configured."""
        c = self._children.pop(target_name, None)
        single = (
            self.success, self.duration, self.http_status, self.ssl_expiry, self.ws_status,
            self.ws_close, self.target_ready,
        )
        for metric in single:
            _remove(metric, target_name)
        for phase in HTTP_PHASES:
            _remove(self.http_phase, target_name, phase)
        for phase in WS_PHASES:
            _remove(self.ws_phase, target_name, phase)
        for result in RESULTS:
            _remove(self.results, target_name, result)
        for failure in Failure:
            _remove(self.failures, target_name, failure.value)
        for measure in c.latency if c is not None else ():
            _remove(self.latency, target_name, measure)
        _remove(self.target_critical, target_name)
        self._undescribe(target_name)

    def _undescribe(self, target_name: str) -> None:
        """Remove a target's latency-bound series (whichever measure they were for)."""
        for measure in MEASURES:
            for quantile, _ in BOUNDS:
                _remove(self.latency_target, target_name, measure, quantile)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass

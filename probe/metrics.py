"""Prometheus metrics with blackbox_exporter's names, so existing dashboards and alerts just work.

Per-target series are plain Python numbers on one small object per target (TargetSeries), not
prometheus-client metrics: at 2 000 targets prometheus-client needed 1.5 s of CPU per scrape
(2.1 s in OpenMetrics) and a lock per recorded value, on the core that also times the probes.
record() is now attribute stores and integer increments; probe.exposition writes the text from
series prefixes built once per target. The few process-wide series (build info, gate, scheduler
lag) stay on a prometheus-client registry of our own (never the global one, so tests and the
demo can run several daemons in one process) and are appended to the same exposition.

Label values are bounded: `target` is the target's name, the others come from closed sets
(Failure, phase names, measures), never from an error message.

Which series, and why (a probed plain HTTP target: 51 lines with probe_target_ready, was 70;
WebSocket with messages: 50, was 90):
- probe_failures_total is pre-initialised to 0 for each failure the target's KIND can report,
  so `rate()` and `increase()` see a 0 -> 1 step instead of a series appearing out of nowhere.
  An HTTP target never reports ws_*, a WebSocket one never http_status or version_mismatch, and
  `latency` is a window verdict (probe_target_ready shows it), not a probe result. A failure
  outside the kind's set is still counted: its series appears when it first happens.
- probe_latency_seconds keeps a histogram for `total` and, if the target's latency target
  judges another measure (Target.measure: ttfb, handshake, rtt), for that one too: what the
  latency alert and the dashboard compare against the configured bounds. Other measures a probe
  reports (every HTTP probe's ttfb: 20 lines per target) are not exported: nothing read them,
  and a target whose ttfb matters says so with `latency: {measure: ttfb}`. The 17 buckets
  stay: histogram_quantile interpolates within a bucket, and the alert compares that estimate
  with bounds from 10 ms to seconds. Every named step (a flow's steps, a WebSocket target's
  named steps) has its histogram too, `measure` its name: the labels come from the file and
  are bounded there (probe.config.steps.MAX_STEP_MEASURES per target).
- probe_scheduler_lag_seconds is a histogram, not a summary: dashboards want a p99 and
  `histogram_quantile(0.99, sum by (le) (rate(probe_scheduler_lag_seconds_bucket[5m])))` also
  aggregates across replicas, which summary quantiles cannot.
- The last-probe gauges (probe_success, probe_duration_seconds, status, phases) appear with a
  target's first result: before it, "absent" is honest where a 0 would claim a failure.
- probe_target_last_result_timestamp_seconds (unix time of the last result) is what tells a
  `stale` target (probe_target_ready 0 for want of results: probe.readiness) from a failing one
  where only the metrics are seen: `probe gate --prometheus -c FILE` compares its age with the
  file's 2 x interval + timeout.
- Phases a probe did not reach are set to 0 (as blackbox_exporter does for an http:// URL's tls),
  so a failed probe never shows the previous probe's timings.
- WebSocket targets also carry blackbox_exporter's WebSocket prober gauges,
  probe_websocket_connection_upgraded and (with messages) probe_websocket_failed_due_to_regex,
  so its dashboards work on ours; its prober has no phase durations, ours stay as they are.
- `_created` series are disabled: they double the series count and no dashboard reads them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics

from probe import __version__
from probe.config import Target
from probe.config.steps import measure_names
from probe.exposition import (
    DURATION,
    FAILURES,
    HTTP_FACTS,
    HTTP_PHASE,
    HTTP_STATUS,
    LAST_RESULT,
    LATENCY,
    LATENCY_TARGET,
    RESULTS,
    SSL_EXPIRY,
    SSL_LEAF_EXPIRY,
    SUCCESS,
    TARGET_CRITICAL,
    TARGET_READY,
    TLS_VERSION,
    WS_CLOSE,
    WS_PHASE,
    WS_REGEX,
    WS_STATUS,
    WS_UPGRADED,
    escape,
    num,
    prefix,
    render,
)
from probe.outcome import Failure, HttpFacts, Outcome

disable_created_metrics()

HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
WS_PHASES = ("resolve", "connect", "handshake", "rtt")
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULT_VALUES = ("success", "failure")
BOUNDS = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))  # quantile label -> LatencyTarget field
_NEVER_A_PROBE_RESULT = {Failure.LATENCY}
KIND_FAILURES: dict[str, tuple[str, ...]] = {
    "http": tuple(f.value for f in Failure
                  if not f.value.startswith("ws_") and f not in _NEVER_A_PROBE_RESULT),
    "websocket": tuple(f.value for f in Failure if f not in _NEVER_A_PROBE_RESULT
                       and f not in (Failure.HTTP_STATUS, Failure.VERSION_MISMATCH)),
    "flow": tuple(f.value for f in Failure if f not in _NEVER_A_PROBE_RESULT),  # its steps'
}
_LE = (*(num(b) for b in LATENCY_BUCKETS), "+Inf")


class _Cell:
    """One counter series: its line prefix and its value."""

    __slots__ = ("prefix", "value")

    def __init__(self, line_prefix: str) -> None:
        self.prefix = line_prefix
        self.value = 0


class _Histogram:
    """One target's latency histogram for one measure. `counts` are per bucket, not cumulative
    (observe is one increment); the last one counts what is above every bound."""

    __slots__ = ("counts", "p_buckets", "p_count", "p_sum", "sum")

    def __init__(self, labels: str) -> None:
        self.p_buckets = tuple(prefix(LATENCY.name + "_bucket", f'le="{le}",{labels}')
                               for le in _LE)
        self.p_count = prefix(LATENCY.name + "_count", labels)
        self.p_sum = prefix(LATENCY.name + "_sum", labels)
        self.counts = [0] * len(_LE)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


class TargetSeries:
    """Everything /metrics shows about one target, as numbers plus precomputed line prefixes.

    Labels are in prometheus-client's order (sorted by name), so every line reads exactly as
    it did when prometheus-client wrote it. Written only on the event loop; read by the render
    thread. Values are replaced whole
    (floats, tuples, lists) or bumped in place; a dict the render may be iterating is never
    resized: a new one replaces it.
    """

    __slots__ = (
        "bound_lines", "cert_expiry", "critical_line", "duration", "failures", "hists",
        "http_facts", "http_lines", "http_status", "kind", "labels", "last_result",
        "leaf_expiry", "measures", "name", "p_cert_expiry", "p_duration", "p_http_status",
        "p_last_result", "p_leaf_expiry", "p_phases",
        "p_ready", "p_success", "p_ws_close", "p_ws_regex", "p_ws_status", "p_ws_upgraded",
        "phase_names", "phases", "ready", "results", "success", "with_messages", "ws_close",
        "ws_regex", "ws_status", "ws_upgraded",
    )

    def __init__(self, target: Target) -> None:
        self.name = target.name
        self.kind = target.kind
        lbl = self.labels = f'target="{escape(target.name)}"'
        ws = self.kind == "websocket"
        self.success: float | None = None  # None until the first probe: then the gauges appear
        self.duration = 0.0
        self.http_status: int | None = None
        self.ws_status: int | None = None
        self.ws_close: int | None = None
        self.ws_upgraded: float | None = None  # blackbox_exporter's two WebSocket gauges
        self.ws_regex: float | None = None  # None on targets without messages: no series
        self.with_messages = False
        self.cert_expiry: float | None = None
        self.leaf_expiry: float | None = None
        self.ready: float | None = None
        self.last_result = 0.0  # shown with the other last-probe gauges, from the first result
        # a flow has no phases of its own: its steps' times are latency measures
        self.phase_names = WS_PHASES if ws else () if self.kind == "flow" else HTTP_PHASES
        self.phases: list[float] = [0.0] * len(self.phase_names)
        self.p_success = prefix(SUCCESS.name, lbl)
        self.p_duration = prefix(DURATION.name, lbl)
        self.p_http_status = "" if ws else prefix(HTTP_STATUS.name, lbl)
        self.p_ws_status = prefix(WS_STATUS.name, lbl) if ws else ""
        self.p_ws_close = prefix(WS_CLOSE.name, lbl) if ws else ""
        self.p_ws_upgraded = prefix(WS_UPGRADED.name, lbl) if ws else ""
        self.p_ws_regex = prefix(WS_REGEX.name, lbl) if ws else ""
        self.p_cert_expiry = prefix(SSL_EXPIRY.name, lbl)
        self.p_leaf_expiry = prefix(SSL_LEAF_EXPIRY.name, lbl)
        self.p_ready = prefix(TARGET_READY.name, lbl)
        self.p_last_result = prefix(LAST_RESULT.name, lbl)
        # blackbox_exporter's HTTP series: no lines until an HTTP probe reports them
        self.http_facts: HttpFacts | None = None
        self.http_lines = NO_HTTP_LINES
        phase_family = (WS_PHASE if ws else HTTP_PHASE).name
        self.p_phases = tuple(prefix(phase_family, f'phase="{p}",{lbl}')
                              for p in self.phase_names)
        self.results = {r: _Cell(prefix(RESULTS.name + "_total", f'result="{r}",{lbl}'))
                        for r in RESULT_VALUES}
        self.failures = {f: self._failure_cell(f) for f in KIND_FAILURES[self.kind]}
        self.hists: dict[str, _Histogram] = {}
        self.describe(target)

    def _failure_cell(self, failure: str) -> _Cell:
        return _Cell(prefix(FAILURES.name + "_total", f'failure="{failure}",{self.labels}'))

    def describe(self, target: Target) -> None:
        """Take the target's config: latency bounds, criticality, which measures to keep."""
        lbl = self.labels
        self.critical_line = prefix(TARGET_CRITICAL.name, lbl) + ("1.0" if target.critical
                                                                 else "0.0")
        lines = []
        for lat in target.latencies:
            for quantile, attr in BOUNDS:
                bound = getattr(lat, attr)
                if bound is not None:
                    labels = f'measure="{lat.measure}",quantile="{quantile}",{lbl}'
                    lines.append(prefix(LATENCY_TARGET.name, labels) + num(bound))
        self.bound_lines = "".join(lines)
        self.with_messages = bool(target.messages)
        if not self.with_messages:
            self.ws_regex = None
        self.measures = tuple(dict.fromkeys(("total", *(b.measure for b in target.latencies))))
        steps = [m for m in measure_names(target) if m not in self.measures]
        self.measures = (*self.measures, *steps)
        if not self.hists.keys() <= set(self.measures):
            self.hists = {m: h for m, h in self.hists.items() if m in self.measures}

    def record(self, outcome: Outcome) -> None:
        self.last_result = time.time()  # the clock Readiness judges staleness by, at delivery
        self.duration = outcome.duration
        if self.kind == "http":
            self.http_status = outcome.status_code or 0
        elif self.kind == "websocket":
            self.ws_status = outcome.status_code or 0
            self.ws_close = outcome.close_code or 0
            # As blackbox_exporter: upgraded once the server said 101; failed_due_to_regex when
            # the session then failed, which with messages configured is in their exchange.
            upgraded = self.ws_status == 101
            self.ws_upgraded = 1.0 if upgraded else 0.0
            if self.with_messages:
                self.ws_regex = 1.0 if upgraded and not outcome.success else 0.0
        got = outcome.phases
        self.phases = [got.get(p, 0.0) for p in self.phase_names]
        if outcome.latency:
            for measure in self.measures:
                seconds = outcome.latency.get(measure)
                if seconds is not None:
                    hist = self.hists.get(measure)
                    if hist is None:
                        hist = _Histogram(f'measure="{measure}",{self.labels}')
                        self.hists = {**self.hists, measure: hist}
                    hist.observe(seconds)
        if outcome.cert_expiry is not None:
            self.cert_expiry = outcome.cert_expiry
        if outcome.http is not None:
            self._http(outcome.http)
        if outcome.leaf_expiry is not None:
            self.leaf_expiry = outcome.leaf_expiry
        self.success = 1.0 if outcome.success else 0.0
        self.results["success" if outcome.success else "failure"].value += 1
        if outcome.failure is not None:
            cell = self.failures.get(outcome.failure.value)
            if cell is None:  # outside the kind's usual set: counted all the same
                cell = self._failure_cell(outcome.failure.value)
                self.failures = {**self.failures, outcome.failure.value: cell}
            cell.value += 1


    def _http(self, facts: HttpFacts) -> None:
        """The lines of exposition.HTTP_FACTS, rebuilt only when the facts change (a steady
        target's never do), and replaced whole for the render thread."""
        if facts == self.http_facts:
            return
        self.http_facts = facts
        lbl = self.labels
        values = (1.0 if facts.ssl else 0.0, facts.version, facts.redirects,
                  facts.content_length, facts.body_length, 1.0 if facts.failed_regex else 0.0)
        tls = "" if facts.tls_version is None else prefix(
            TLS_VERSION.name, f'{lbl},version="{escape(facts.tls_version)}"') + "1.0"
        self.http_lines = (*(prefix(family.name, lbl) + num(float(v))
                             for family, v in zip(HTTP_FACTS[:-1], values, strict=True)), tls)


NO_HTTP_LINES = ("",) * len(HTTP_FACTS)


class Metrics:
    def __init__(self, version: str = __version__) -> None:
        p = self._process = CollectorRegistry(auto_describe=True)
        self.gate_ready = Gauge(
            "probe_gate_ready", "1 if every critical target is ready", registry=p
        )
        self.build_info = Gauge(
            "probe_build_info", "stageprobe's own version", ["version"], registry=p
        )
        self.lag = Histogram(
            "probe_scheduler_lag_seconds", "how late probes start against their schedule",
            buckets=LAG_BUCKETS, registry=p,
        )
        self.build_info.labels(version).set(1)
        # Which shard of the fleet this daemon is (PROBE_SHARD; 0/1 unsharded), so the gate,
        # the dashboard and the shard-missing alert see every replica, and how many to expect.
        self.shard_info = Gauge(
            "probe_shard_info", "this daemon's shard (PROBE_SHARD INDEX/COUNT)",
            ["shard", "index", "count", "replicas"], registry=p,
        )
        self.shard_count = Gauge(
            "probe_shards", "how many shards the fleet has (PROBE_SHARD's COUNT)", registry=p
        )
        self.set_shard(0, 1, 1)
        self._series: dict[str, TargetSeries] = {}
        # What render() iterates, in another thread: replaced on add/forget, never changed.
        self._snapshot: tuple[TargetSeries, ...] = ()

    def add_target(self, target: Target) -> None:
        """Create a target's counters at 0 and its config series (at start and on reload)."""
        current = self._series.get(target.name)
        if current is not None and current.kind == target.kind:
            current.describe(target)
            return
        # new, or same name and other kind (http <-> ws): other series, counters from 0
        self._series[target.name] = TargetSeries(target)
        self._snapshot = tuple(self._series.values())

    def record(self, outcome: Outcome, target: Target) -> None:
        series = self._series.get(target.name)
        if series is None:
            self.add_target(target)
            series = self._series[target.name]
        if outcome.kind == series.kind:  # else a probe started before a reload changed the kind
            series.record(outcome)

    def set_readiness(self, gate: bool, targets: Iterable[tuple[str, bool]]) -> None:
        """probe_gate_ready and each target's probe_target_ready (Readiness.ready_flags())."""
        series = self._series
        for name, ready in targets:
            s = series.get(name)
            if s is not None:
                s.ready = 1.0 if ready else 0.0
        self.gate_ready.set(1 if gate else 0)

    def set_shard(self, index: int, count: int, replicas: int) -> None:
        """probe_shard_info{shard="INDEX/COUNT",...} 1 and probe_shards COUNT."""
        self.shard_info.clear()
        self.shard_info.labels(f"{index}/{count}", str(index), str(count), str(replicas)).set(1)
        self.shard_count.set(count)

    def observe_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def forget(self, target_name: str) -> None:
        """Remove every series of a target that is no longer configured."""
        if self._series.pop(target_name, None) is not None:
            self._snapshot = tuple(self._series.values())

    def render(self, openmetrics: bool = False) -> bytes:
        """The exposition (text 0.0.4 or OpenMetrics 1.0.0); safe to call from another thread."""
        return render(self._snapshot, self._process, openmetrics)


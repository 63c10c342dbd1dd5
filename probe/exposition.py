"""The /metrics text for thousands of targets, written from plain numbers in a few tens of ms.

prometheus-client builds a Sample object per line and formats its labels on every scrape:
~10 us a line, 1.5 s per scrape at 2 000 targets, taken from the one core that also times the
probes. Here each target's series prefixes (`probe_success{target="x"} `) are built once, when
the target is added, so a scrape is a string join plus one float formatting per line.

Both formats Prometheus negotiates come out of the same lines: they differ only in a counter's
HELP/TYPE name (`probe_results_total` in text 0.0.4, `probe_results` in OpenMetrics) and the
closing `# EOF`. Numbers are formatted exactly as prometheus-client formats them
(`floatToGoString`), so the output does not change for anyone who diffs or parses it.

Every line is stored with its newline in FRONT ("\\nname{labels} "): a line is then two list
appends (prefix, value), and render() drops the leading newline once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from probe.metrics import TargetSeries

OPENMETRICS = "application/openmetrics-text"


def num(value: float) -> str:
    """prometheus-client's number format (Go's), with its common case inlined: for 0 <= x < 1e6
    floatToGoString is repr(float(x)); above, Go switches to exponents (`1.7e+09`)."""
    if 0.0 <= value < 1e6:
        return repr(float(value))
    return floatToGoString(value)


def count(value: int) -> str:
    """A counter or bucket count, formatted as the float prometheus-client would print."""
    if 0 <= value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


def escape(value: str) -> str:
    """A label value as both formats require: backslash, double quote and newline escaped.
    Target names are restricted by config to [A-Za-z0-9_.:-], but this is the one place that
    would let a quote through if that rule ever loosened."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prefix(name: str, labels: str) -> str:
    """The start of one series line: `\\nname{labels} ` (the value follows)."""
    return f"\n{name}{{{labels}}} "


def negotiate(accept: str) -> tuple[bool, str]:
    """(OpenMetrics?, Content-Type) for an Accept header, decided as prometheus-client decides,
    except that the body written here is always OpenMetrics 1.0.0: an Accept that prefers 2.0.0
    gets 1.0.0 labelled as such (a 2.0.0 label on a 1.0.0 body would misinform the parser)."""
    _, content_type = choose_encoder(accept)
    if content_type.startswith(OPENMETRICS):
        return True, re.sub(r"version=[0-9.]+", "version=1.0.0", content_type, count=1)
    return False, content_type


class Family(NamedTuple):
    name: str
    type: str
    help: str

    def header(self, openmetrics: bool) -> str:
        name = self.name + "_total" if self.type == "counter" and not openmetrics else self.name
        return f"\n# HELP {name} {self.help}\n# TYPE {name} {self.type}"


SUCCESS = Family("probe_success", "gauge", "1 if the last probe succeeded")
DURATION = Family("probe_duration_seconds", "gauge", "how long the last probe took")
HTTP_STATUS = Family("probe_http_status_code", "gauge", "HTTP status of the last probe (0: none)")
HTTP_PHASE = Family("probe_http_duration_seconds", "gauge",
                    "duration of each HTTP phase of the last probe")
SSL_EXPIRY = Family("probe_ssl_earliest_cert_expiry", "gauge",
                    "unix time the earliest certificate of the verified chain expires")
SSL_LEAF_EXPIRY = Family("probe_ssl_leaf_cert_expiry", "gauge",
                         "unix time the server's own certificate expires")
# blackbox_exporter's HTTP series (probe.outcome.HttpFacts), so its dashboards read ours
HTTP_SSL = Family("probe_http_ssl", "gauge", "1 if the final answer came over TLS")
HTTP_VERSION = Family("probe_http_version", "gauge", "HTTP version of the final answer")
HTTP_REDIRECTS = Family("probe_http_redirects", "gauge", "redirects followed")
HTTP_LENGTH = Family("probe_http_content_length", "gauge",
                     "Content-Length of the final answer (-1: none)")
HTTP_BODY = Family("probe_http_uncompressed_body_length", "gauge",
                   "body bytes of the final answer after decoding")
HTTP_REGEX = Family("probe_failed_due_to_regex", "gauge",
                    "1 if a body or header pattern of expect failed")
TLS_VERSION = Family("probe_tls_version_info", "gauge", "the TLS version of the last probe")
# In this order, TargetSeries.http_lines holds one ready line per family (built when a target's
# HttpFacts change, so neither a steady probe nor a scrape formats them).
HTTP_FACTS = (HTTP_SSL, HTTP_VERSION, HTTP_REDIRECTS, HTTP_LENGTH, HTTP_BODY, HTTP_REGEX,
              TLS_VERSION)
WS_STATUS = Family("probe_websocket_status_code", "gauge",
                   "HTTP status of the WebSocket upgrade (101: accepted)")
WS_CLOSE = Family("probe_websocket_close_code", "gauge",
                  "close code the session ended with (0: none)")
# blackbox_exporter's WebSocket prober (main branch) names, so its dashboards read ours too.
WS_UPGRADED = Family("probe_websocket_connection_upgraded", "gauge",
                     "1 if the WebSocket upgrade was accepted (101) on the last probe")
WS_REGEX = Family("probe_websocket_failed_due_to_regex", "gauge",
                  "1 if the last probe failed after the upgrade, in its messages (targets with "
                  "messages only)")
WS_PHASE = Family("probe_websocket_duration_seconds", "gauge",
                  "duration of each WebSocket phase of the last probe")
LATENCY = Family("probe_latency_seconds", "histogram",
                 "latency of each probe by measure (total|handshake|rtt|ttfb|a step's name)")
RESULTS = Family("probe_results", "counter", "probes by result (success|failure)")
FAILURES = Family("probe_failures", "counter", "failed probes by failure class")
TARGET_READY = Family("probe_target_ready", "gauge", "1 if the target counts as ready")
LATENCY_TARGET = Family("probe_latency_target_seconds", "gauge",
                        "configured latency bound by measure and quantile (0.5|0.95|0.99)")
TARGET_CRITICAL = Family("probe_target_critical", "gauge",
                         "1 if the target gates readiness (critical: true)")
LAST_RESULT = Family("probe_target_last_result_timestamp_seconds", "gauge",
                     "unix time of the target's last probe result")


def render(
    series: Sequence[TargetSeries], process: CollectorRegistry, openmetrics: bool
) -> bytes:
    """The whole exposition: every target's families, then the process-wide ones (a handful of
    lines, rendered by prometheus-client; its OpenMetrics output brings the one `# EOF`).

    Runs in a worker thread while the event loop records: it reads only `series` (a tuple the
    loop replaces, never mutates) and each series' attributes, which the loop swaps whole or
    bumps in place, so a concurrent probe can at worst tear one target's lines, never raise.
    """
    out: list[str] = []
    w = out.append
    for family, get, get_prefix, fmt in _GAUGES:
        w(family.header(openmetrics))
        for s in series:
            if s.success is not None and (v := get(s)) is not None:
                w(get_prefix(s))
                w(fmt(v))
    for family, kind in ((HTTP_PHASE, "http"), (WS_PHASE, "websocket")):
        w(family.header(openmetrics))
        for s in series:
            if s.success is not None and s.kind == kind:
                for pre, v in zip(s.p_phases, s.phases, strict=False):
                    w(pre)
                    w(num(v))
    for i, family in enumerate(HTTP_FACTS):
        w(family.header(openmetrics))
        out.extend(s.http_lines[i] for s in series)
    w(LATENCY.header(openmetrics))
    for s in series:
        for h in s.hists.values():
            total, text = 0, "0.0"
            for pre, n in zip(h.p_buckets, h.counts.copy(), strict=True):
                if n:  # most buckets add nothing: the previous line's text stands
                    total += n
                    text = count(total)
                w(pre)
                w(text)
            w(h.p_count)  # = the +Inf bucket, even when a probe lands mid-render
            w(text)
            w(h.p_sum)
            w(num(h.sum))
    for family, cells in ((RESULTS, "results"), (FAILURES, "failures")):
        w(family.header(openmetrics))
        for s in series:
            for cell in getattr(s, cells).values():
                w(cell.prefix)
                w(count(v) if (v := cell.value) else "0.0")
    w(TARGET_READY.header(openmetrics))
    for s in series:
        if s.ready is not None:
            w(s.p_ready)
            w(num(s.ready))
    w(LATENCY_TARGET.header(openmetrics))
    out.extend(s.bound_lines for s in series)
    w(TARGET_CRITICAL.header(openmetrics))
    out.extend(s.critical_line for s in series)
    tail = (generate_openmetrics if openmetrics else generate_latest)(process)
    return "".join(out)[1:].encode() + b"\n" + tail


# Single-valued gauges of the last probe: (family, TargetSeries attribute, formatter). A series
# has them once it has been probed (`success` set); status and close code are kind-specific
# (None on the other kind), the certificate's expiry only after a TLS handshake.
_GAUGES = tuple(
    (family, attrgetter(attr), attrgetter("p_" + attr), fmt)
    for family, attr, fmt in (
        (SUCCESS, "success", num),
        (DURATION, "duration", num),
        (HTTP_STATUS, "http_status", count),
        (SSL_EXPIRY, "cert_expiry", num),
        (SSL_LEAF_EXPIRY, "leaf_expiry", num),
        (WS_STATUS, "ws_status", count),
        (WS_CLOSE, "ws_close", count),
        (WS_UPGRADED, "ws_upgraded", num),
        (WS_REGEX, "ws_regex", num),
        (LAST_RESULT, "last_result", num),
    )
)

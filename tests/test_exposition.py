"""The fast exposition against prometheus-client's own writer and parsers.

probe.exposition writes the text itself (prefixes built once per target) instead of letting
prometheus-client build it line by line. These tests hold it to prometheus-client: what it
writes, parsed by prometheus-client's parser and written again by prometheus-client's writer,
must come back byte for byte, in both formats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from faults.fixtures import config_of
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from prometheus_client.utils import floatToGoString

from probe.exposition import count, negotiate, num
from probe.metrics import Metrics
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness


class Parsed:
    """prometheus-client families parsed from a text, as a collector its writers accept."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def busy_metrics() -> Metrics:
    """Every kind of series: http and https, websocket, bounds, failures, readiness, lag."""
    config = config_of([
        {"name": "api", "url": "https://127.0.0.1:1/health",
         "latency": {"measure": "ttfb", "p50": "20ms", "p95": "150ms", "p99": "2s"}},
        {"name": "chat", "url": "ws://127.0.0.1:1/ws", "critical": False,
         "messages": [{"send": {"type": "ping"}}],
         "latency": {"measure": "rtt", "p95": "1s"}},
        {"name": "never-probed", "url": "http://127.0.0.1:1/"},
    ])
    m = Metrics(version="1.2.3")
    api, chat, _ = config.targets
    for target in config.targets:
        m.add_target(target)
    m.record(Outcome("api", "http", True, 0.0421, status_code=200,
                     phases={"resolve": 1e-05, "connect": 0.0012, "tls": 0.0031,
                             "processing": 0.03, "transfer": 0.0004},
                     latency={"total": 0.0421, "ttfb": 0.039}, cert_expiry=1767225600.0), api)
    m.record(Outcome.failed("api", "http", Failure.TIMEOUT, "timed out", 1.000031), api)
    m.record(Outcome("chat", "websocket", True, 0.3, status_code=101, close_code=1000,
                     phases={"connect": 0.001, "handshake": 0.002, "rtt": 0.25},
                     latency={"total": 0.3, "handshake": 0.002, "rtt": 0.25}), chat)
    m.record(Outcome.failed("chat", "websocket", Failure.WS_CLOSED, "1011", 12.5,
                            status_code=101, close_code=1011), chat)
    readiness = Readiness(config)
    readiness.observe(Outcome("api", "http", True, 0.04), now=1.0)
    m.set_readiness(*readiness.ready_flags(1.0))
    for lag in (0.0004, 0.02, 3.0):
        m.observe_lag(lag)
    return m


def test_text_format_is_exactly_what_prometheus_client_writes() -> None:
    ours = busy_metrics().render(openmetrics=False).decode()
    theirs = generate_latest(Parsed(text_parse(ours))).decode()  # type: ignore[arg-type]
    assert ours == theirs
    assert 'probe_ssl_earliest_cert_expiry{target="api"} 1.7672256e+09\n' in ours
    assert "# TYPE probe_results_total counter\n" in ours and "# EOF" not in ours


def test_openmetrics_is_exactly_what_prometheus_client_writes() -> None:
    ours = busy_metrics().render(openmetrics=True).decode()
    theirs = generate_openmetrics(Parsed(om_parse(ours))).decode()  # type: ignore[arg-type]
    assert ours == theirs
    assert "# TYPE probe_results counter\n" in ours
    assert ours.endswith("# EOF\n") and ours.count("# EOF") == 1


def test_both_formats_carry_the_same_samples() -> None:
    m = busy_metrics()

    def samples(families: Iterable[Metric]) -> dict[tuple[str, frozenset[Any]], float]:
        return {(s.name, frozenset(s.labels.items())): s.value for f in families
                for s in f.samples}

    text = samples(text_parse(m.render(False).decode()))
    om = samples(om_parse(m.render(True).decode()))
    assert text == om
    assert text[("probe_latency_seconds_count",
                 frozenset({("target", "api"), ("measure", "ttfb")}))] == 1
    assert text[("probe_failures_total",
                 frozenset({("target", "chat"), ("failure", "ws_closed")}))] == 1
    assert text[("probe_websocket_close_code", frozenset({("target", "chat")}))] == 1011
    # blackbox_exporter's WebSocket gauges: upgraded (101), then the message session failed
    chat = frozenset({("target", "chat")})
    assert text[("probe_websocket_connection_upgraded", chat)] == 1
    assert text[("probe_websocket_failed_due_to_regex", chat)] == 1
    assert not [k for k in text if ("target", "never-probed") in k[1]
                and k[0] in ("probe_success", "probe_http_status_code")]


@pytest.mark.parametrize("value", [
    0.0, -0.0, 1.0, 0.1, 1e-05, 2.5e-07, 0.0421, 123.456, 999999.0, 999999.9999, 1e6, 1000001.5,
    1767225600.0, 1.7e9 + 0.25, 1e16, 1.5e300, -3.5, -2e7, math.inf, -math.inf, math.nan,
])
def test_numbers_are_formatted_as_prometheus_client_formats_them(value: float) -> None:
    assert num(value) == floatToGoString(value)


@pytest.mark.parametrize("value", [0, 1, 7, 999_999, 1_000_000, 1_234_567, 10**12])
def test_counts_are_formatted_as_prometheus_client_formats_them(value: int) -> None:
    assert count(value) == floatToGoString(value)


def test_label_values_are_escaped(tmp_path: Path) -> None:
    """Config allows only [A-Za-z0-9_.:-] in names; were that loosened, the text stays valid."""
    name = 'we"ird\\name\nline2'
    target = config_of([{"name": "x", "url": "http://127.0.0.1:1/"}]).targets[0].model_copy(
        update={"name": name})
    m = Metrics()
    m.add_target(target)
    m.record(Outcome.failed(name, "http", Failure.REFUSED, "refused", 0.001), target)
    for openmetrics, parse in ((False, text_parse), (True, om_parse)):
        families = {f.name: f for f in parse(m.render(openmetrics).decode())}
        (sample,) = families["probe_success"].samples
        assert sample.labels == {"target": name}, openmetrics


@pytest.mark.parametrize("accept", [
    "",
    "*/*",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.2",
])
def test_negotiation_follows_prometheus_client(accept: str) -> None:
    openmetrics, content_type = negotiate(accept)
    assert content_type == choose_encoder(accept)[1].replace("version=2.0.0", "version=1.0.0")
    assert openmetrics == content_type.startswith("application/openmetrics-text")


def test_openmetrics_2_asked_gets_1_0_0_labelled_as_such() -> None:
    """What is written is OpenMetrics 1.0.0 whatever the Accept prefers; its label must say so
    (prometheus-client's own choice would say 2.0.0)."""
    openmetrics, content_type = negotiate(
        "application/openmetrics-text;version=2.0.0,application/openmetrics-text;version=1.0.0;q=0.9"
    )
    assert openmetrics
    assert "version=1.0.0" in content_type and "2.0.0" not in content_type

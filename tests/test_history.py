"""probe.daemon.history: bounds (count, span, total across targets), downsampling and state
changes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from probe.config import parse_config
from probe.daemon.history import History, _Results
from probe.outcome import Failure, Outcome


def ok(name: str, at: float, total: float = 0.01, **latency: float) -> Outcome:
    return Outcome(target=name, kind="http", success=True, duration=total, status_code=200,
                   latency={"total": total, **latency}, started_at=at)


def bad(
    name: str, at: float, failure: Failure = Failure.HTTP_STATUS, code: int | None = 503
) -> Outcome:
    return Outcome.failed(name, "http", failure, f"HTTP {code}", 0.002, status_code=code,
                          started_at=at)


@dataclass(frozen=True)
class T:
    target: str
    old: str
    new: str
    failure: Failure | None
    detail: str
    at: float


def test_count_bound_holds_under_10000_inserts() -> None:
    h = History(results=1000, span=1e9)
    for i in range(10_000):
        h.record(ok("a", float(i)) if i % 7 else bad("a", float(i)))
        assert h.count("a") <= 1000
    assert h.count("a") == 1000
    assert h.stored() <= 2 * 1000 + 64  # dead slots are compacted away
    snap = h.snapshot("a", now=10_000.0, max_points=10_000)
    assert snap["count"] == 1000
    assert [p[0] for p in snap["points"]] == [float(i) for i in range(9000, 10_000)]  # newest kept
    assert snap["failures"] == sum(1 for i in range(9000, 10_000) if i % 7 == 0)


def test_span_bound_prunes_old_results() -> None:
    h = History(results=1000, span=60.0)
    for i in range(300):  # one a second: only the last minute stays
        h.record(ok("a", 1000.0 + i))
        assert h.count("a") <= 61
    assert h.count("a") == 61
    snap = h.snapshot("a", now=1299.0)
    assert snap["points"][0][0] == 1239.0 and snap["points"][-1][0] == 1299.0
    # Time passing without new results prunes at read time too.
    assert h.snapshot("a", now=1330.0)["count"] == 30
    assert h.snapshot("a", now=5000.0)["count"] == 0
    assert h.snapshot("a", now=5000.0)["points"] == []
    assert h.stored() == 0


def test_whichever_is_smaller_count_or_span() -> None:
    h = History(results=10, span=60.0)
    for i in range(30):
        h.record(ok("a", float(i)))
    assert h.count("a") == 10  # 30 in the span, but only 10 allowed


def test_total_memory_bounded_whatever_the_number_of_targets() -> None:
    h = History(results=1000, span=1e9, total_results=5000, min_per_target=16)
    for round_ in range(60):
        for t in range(200):
            h.record(ok(f"t{t}", float(round_)))
    counts = [h.count(f"t{t}") for t in range(200)]
    assert max(counts) <= 25 and sum(counts) <= 5000
    assert h.stored() <= 2 * 5000 + 64 * 200
    # Targets leaving the config give their share back.
    h.retain({"t0", "t1"})
    assert "t5" not in h and h.count("t5") == 0
    for i in range(2000):
        h.record(ok("t0", 100.0 + i))
    assert h.count("t0") == 1000


def test_state_changes_are_capped_newest_first_and_truncated() -> None:
    h = History(transitions=100)
    for i in range(10_000):
        new, old = ("failing", "ready") if i % 2 else ("ready", "failing")
        h.transition(T("a", old, new, Failure.REFUSED if new == "failing" else None,
                       "x" * 5000, float(i)))
    snap = h.snapshot("a", now=10_000.0, max_transitions=1000)
    changes = snap["transitions"]
    assert len(changes) == 100
    assert changes[0]["at"] == 9999.0 and changes[0]["new"] == "failing"
    assert changes[0]["failure"] == "refused" and changes[1]["failure"] is None
    assert len(changes[0]["detail"]) <= 300
    assert len(h.snapshot("a", now=10_000.0)["transitions"]) == 20  # default page size


def test_downsampling_keeps_spikes_and_failures() -> None:
    h = History(results=1000, span=1e9)
    for i in range(1000):
        if i == 500:
            h.record(bad("a", float(i), Failure.TIMEOUT, None))
        else:
            h.record(ok("a", float(i), total=0.9 if i == 250 else 0.010, rtt=0.005))
    snap = h.snapshot("a", now=1000.0, max_points=50)
    points = snap["points"]
    assert len(points) == 50
    assert sum(p[1] for p in points) == 1000 and sum(p[2] for p in points) == 1
    assert max(p[3] for p in points) == 900.0  # the spike survives as the bucket's worst
    failed = [p for p in points if p[2]]
    assert failed[0][4] == "timeout"
    assert points[-1][0] == 999.0
    rtt = h.snapshot("a", now=1000.0, max_points=50, measure="rtt")
    assert {p[3] for p in rtt["points"]} == {5.0}
    json.dumps(snap, allow_nan=False)  # what the API sends must be strict JSON


def test_failed_probe_has_no_latency_point() -> None:
    h = History()
    h.record(bad("a", 1.0, Failure.REFUSED, None))
    assert h.snapshot("a", now=2.0)["points"] == [[1.0, 1, 1, None, "refused"]]


def test_unknown_target_and_bad_bounds() -> None:
    h = History()
    snap = h.snapshot("nope", now=0.0)
    assert snap["count"] == 0 and snap["points"] == [] and snap["transitions"] == []
    with pytest.raises(ValueError, match="results"):
        History(results=0)


def test_from_config_and_reconfigure() -> None:
    cfg = parse_config("history: {results: 50, span: 2m}\n"
                       "targets: [{name: a, url: 'http://127.0.0.1:1/'}]\n")
    h = History.from_config(cfg)
    assert (h.results, h.span) == (50, 120.0)
    for i in range(100):
        h.record(ok("a", float(i)))
    assert h.count("a") == 50
    h.reconfigure(results=20, span=120.0)
    assert h.count("a") == 20


def test_first_results_of_configured_targets_do_not_retrim_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shares come from the configured target count: each target's first result trims only that
    target (one trim per record), not every stored target again (quadratic start-up)."""
    n = 2000
    cfg = parse_config("history: {results: 1000, span: 1h}\ntargets:\n" + "".join(
        f"  - {{name: t{i}, url: 'http://127.0.0.1:1/{i}'}}\n" for i in range(n)))
    h = History.from_config(cfg)
    trims: list[int] = []
    real_trim = _Results.trim

    def counting(self: _Results, cap: int, oldest: float) -> None:
        trims.append(cap)
        real_trim(self, cap, oldest)

    monkeypatch.setattr(_Results, "trim", counting)
    for round_ in range(3):
        for i in range(n):
            h.record(ok(f"t{i}", float(round_)))
    assert len(trims) == 3 * n  # one per record: nobody else was re-trimmed
    assert set(trims) == {200_000 // n}  # the share never changed during start-up
    # Removals do not rebalance one by one; the reload's reconfigure does, once.
    trims.clear()
    for i in range(10, n):
        h.forget(f"t{i}")
    assert trims == []
    h.reconfigure(results=1000, span=3600.0, targets=10)
    assert len(trims) == 10 and set(trims) == {1000}
    for i in range(2000):
        h.record(ok("t0", 10.0 + i))
    assert h.count("t0") == 1000


def test_more_targets_than_announced_still_respect_the_global_bound() -> None:
    h = History(results=1000, span=1e9, total_results=5000, total_transitions=3000, targets=10)
    for round_ in range(40):
        for t in range(300):
            h.record(ok(f"t{t}", float(round_)))
            h.transition(T(f"t{t}", "pending", "ready", None, "", float(round_)))
    counts = [h.count(f"t{t}") for t in range(300)]
    assert sum(counts) <= 5000 and min(counts) == max(counts) >= 5000 // 300 * 8 // 9
    assert h.stored() <= 2 * 5000 + 64 * 300
    changes = [len(h.snapshot(f"t{t}", 40.0, max_transitions=100)["transitions"])
               for t in range(300)]
    assert sum(changes) <= 3000

"""Readiness: the hysteresis, latency windows, expected version and the gate, with plain values
and property-based tests of the state machine (readiness is pure, so no servers are needed)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from probe.config import Config
from probe.latency_window import percentile
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness, Verdict

FAST = settings(max_examples=150, deadline=None)


def make_config(*targets: dict[str, Any], expect_version: str | None = None) -> Config:
    data: dict[str, Any] = {"targets": [
        {"name": f"t{i}", "url": f"http://127.0.0.1:1/{i}", "interval": "1s", "timeout": "1s",
         **t} for i, t in enumerate(targets)]}
    if expect_version is not None:
        data["expect_version"] = expect_version
    return Config.model_validate(data)


def ok(name: str = "t0", duration: float = 0.01, **kw: Any) -> Outcome:
    return Outcome(target=name, kind="http", success=True, duration=duration, status_code=200, **kw)


def bad(name: str = "t0", failure: Failure = Failure.HTTP_STATUS,
        detail: str = "HTTP 503 (expected 200)", **kw: Any) -> Outcome:
    return Outcome.failed(name, "http", failure, detail, 0.01, status_code=503, **kw)


# --- plain values ----------------------------------------------------------------------------


def test_never_probed_is_pending_and_not_ready() -> None:
    r = Readiness(make_config({}))
    v = r.verdict(0.0)
    assert not v.ready
    (t,) = v.targets
    assert (t.state, t.ready, t.failure, t.detail) == ("pending", False, None, "not probed yet")


def test_ready_after_success_threshold_with_one_transition() -> None:
    r = Readiness(make_config({"success_threshold": 2}))
    assert r.observe(ok(), 1.0) is None
    t = r.verdict(1.0).targets[0]
    assert t.state == "pending" and not t.ready
    assert t.detail == "pending: 1 of 2 consecutive successes"
    tr = r.observe(ok(), 2.0)
    assert tr is not None and (tr.old, tr.new, tr.at, tr.failure) == ("pending", "ready", 2.0, None)
    v = r.verdict(2.0)
    assert v.ready and v.targets[0].ready and v.targets[0].since == 2.0 and v.since == 2.0
    assert r.observe(ok(), 3.0) is None


def test_ready_tolerates_fewer_than_failure_threshold_failures() -> None:
    r = Readiness(make_config({"success_threshold": 1, "failure_threshold": 3}))
    r.observe(ok(), 1.0)
    assert r.observe(bad(), 2.0) is None
    assert r.observe(bad(), 3.0) is None
    v = r.verdict(3.0)
    assert v.ready and v.targets[0].consecutive_failures == 2
    tr = r.observe(bad(detail="HTTP 502 (expected 200)"), 4.0)
    assert tr is not None and (tr.old, tr.new) == ("ready", "failing")
    assert tr.failure is Failure.HTTP_STATUS and tr.detail == "HTTP 502 (expected 200)"
    v = r.verdict(4.0)
    assert not v.ready
    t = v.targets[0]
    assert (t.state, t.failure, t.detail, t.status_code) == (
        "failing", "http_status", "HTTP 502 (expected 200)", 503)


def test_failing_recovers_after_success_threshold_and_says_so_meanwhile() -> None:
    r = Readiness(make_config({"success_threshold": 3, "failure_threshold": 1}))
    r.observe(bad(failure=Failure.REFUSED, detail="connection refused"), 1.0)
    assert r.verdict(1.0).targets[0].state == "failing"
    r.observe(ok(), 2.0)
    r.observe(ok(), 3.0)
    t = r.verdict(3.0).targets[0]
    assert (t.state, t.ready, t.failure) == ("failing", False, "refused")
    assert t.detail == "connection refused (recovering: 2 of 3 successes)"
    tr = r.observe(ok(), 4.0)
    assert tr is not None and (tr.old, tr.new) == ("failing", "ready")
    assert r.verdict(4.0).ready


def test_pending_goes_failing_after_failure_threshold() -> None:
    r = Readiness(make_config({"failure_threshold": 2}))
    r.observe(bad(failure=Failure.DNS, detail="name not found"), 1.0)
    t = r.verdict(1.0).targets[0]
    assert (t.state, t.failure, t.detail) == ("pending", "dns", "name not found")
    tr = r.observe(bad(failure=Failure.DNS, detail="name not found"), 2.0)
    assert tr is not None and (tr.old, tr.new) == ("pending", "failing")


def test_latency_target_breached_keeps_state_but_is_not_ready() -> None:
    cfg = make_config({"success_threshold": 1,
                       "latency": {"p95": "100ms", "window": 5, "min_samples": 3}})
    r = Readiness(cfg)
    r.observe(ok(duration=0.150), 1.0)
    r.observe(ok(duration=0.152), 2.0)
    assert r.verdict(2.0).ready, "no latency verdict before min_samples"
    assert r.awaiting_latency("t0")
    r.observe(ok(duration=0.151), 3.0)
    assert not r.awaiting_latency("t0")
    v = r.verdict(3.0)
    t = v.targets[0]
    assert not v.ready and t.state == "ready" and not t.ready
    assert t.failure == "latency"
    assert t.detail == "total p95 152ms > 100ms (3 samples)"
    assert t.latency_ms["p95"] == pytest.approx(152.0)
    assert t.latency_ms["target_p95"] == pytest.approx(100.0)
    # the window rolls: five fast samples push the slow ones out
    for i in range(5):
        r.observe(ok(duration=0.020), 4.0 + i)
    v = r.verdict(9.0)
    assert v.ready and v.targets[0].latency_ms["p95"] == pytest.approx(20.0)


def test_latency_measure_and_failures_do_not_enter_the_window() -> None:
    cfg = make_config({"url": "ws://127.0.0.1:1/ws", "success_threshold": 1,
                       "messages": [{"send": "ping"}],
                       "latency": {"measure": "rtt", "p99": "50ms", "min_samples": 2}})
    r = Readiness(cfg)
    for _ in range(3):
        r.observe(Outcome(target="t0", kind="websocket", success=True, duration=2.0,
                          latency={"rtt": 0.010, "handshake": 1.5}), 1.0)
    r.observe(Outcome.failed("t0", "websocket", Failure.WS_NO_REPLY, "no pong in 2s", 2.0,
                             latency={"rtt": 2.0}), 2.0)
    t = r.verdict(2.0).targets[0]
    assert t.ready and t.latency_ms["p99"] == pytest.approx(10.0)
    assert t.kind == "websocket"


def test_expected_version_mismatch_names_both_builds() -> None:
    cfg = make_config({"success_threshold": 1, "version_path": "version"},
                      {"success_threshold": 1}, expect_version="def")
    r = Readiness(cfg)
    r.observe(ok("t0", version="abc"), 1.0)
    r.observe(ok("t1"), 1.0)
    v = r.verdict(1.0)
    t0, t1 = v.targets
    assert not v.ready
    assert (t0.state, t0.failure, t0.version) == ("ready", "version_mismatch", "abc")
    assert t0.detail == "serving build abc, expected def"
    assert t1.ready, "a target without version_path is not judged on version"
    r.observe(ok("t0", version="def"), 2.0)
    assert r.verdict(2.0).ready
    # the constructor's expected version (probe check --expect-version) wins over the config's
    r2 = Readiness(cfg, expect_version="abc")
    r2.observe(ok("t0", version="abc"), 1.0)
    r2.observe(ok("t1"), 1.0)
    assert r2.verdict(1.0).ready and r2.expect_version == "abc"


def test_expected_version_never_reported_is_not_ready() -> None:
    r = Readiness(make_config({"success_threshold": 1, "version_path": "build.sha"}),
                  expect_version="def")
    r.observe(ok(), 1.0)
    t = r.verdict(1.0).targets[0]
    assert not t.ready and t.failure == "version_mismatch"
    assert t.detail == "no version reported at 'build.sha', expected def"


def test_gate_waits_for_critical_targets_only() -> None:
    r = Readiness(make_config({"success_threshold": 1}, {"critical": False}))
    r.observe(ok("t0"), 1.0)
    r.observe(bad("t1"), 1.0)
    v = r.verdict(1.0)
    assert v.ready and [t.name for t in v.not_ready()] == ["t1"]


def test_no_critical_target_means_a_vacuously_ready_gate() -> None:
    r = Readiness(make_config({"critical": False}))
    r.observe(bad(), 1.0)
    assert r.verdict(1.0).ready


def test_gate_since_follows_its_flips() -> None:
    r = Readiness(make_config({"success_threshold": 1, "failure_threshold": 1}))
    r.observe(bad(), 1.0)
    assert r.verdict(1.0).since == 1.0
    r.observe(ok(), 5.0)
    r.observe(ok(), 6.0)
    assert r.verdict(6.0).since == 5.0
    r.observe(bad(), 7.0)
    assert r.verdict(7.0).since == 7.0


def test_reconfigure_keeps_unchanged_targets_and_restarts_changed_ones() -> None:
    cfg = make_config({"success_threshold": 1}, {"success_threshold": 1},
                      {"success_threshold": 1})
    r = Readiness(cfg)
    for name in ("t0", "t1", "t2"):
        r.observe(ok(name, duration=0.3), 1.0)
    assert r.verdict(1.0).ready
    new = make_config({"success_threshold": 1, "latency": {"p95": "100ms", "min_samples": 1}},
                      {"success_threshold": 1}, {"success_threshold": 1}, {})
    new = new.model_copy(update={"targets": [  # t0 changed, t1 removed, t2 kept, t9 added
        new.targets[0], new.targets[2], new.targets[3].model_copy(update={"name": "t9"})]})
    changes = r.reconfigure(new)
    assert (changes.added, changes.removed, changes.changed) == (["t9"], ["t1"], ["t0"])
    v = r.verdict(2.0)
    assert [t.name for t in v.targets] == ["t0", "t2", "t9"]
    t0, t2, t9 = v.targets
    assert (t0.state, t0.ready, t0.consecutive_successes, t0.latency_ms) == (
        "pending", False, 0, {"target_p95": 100.0}), "a changed target starts from scratch"
    assert (t2.state, t2.ready, t2.since) == ("ready", True, 1.0), "unchanged: record kept"
    assert t9.state == "pending" and not v.ready
    assert r.observe(ok("t1"), 3.0) is None, "results of a removed target are ignored"


def test_a_changed_credential_restarts_the_targets_using_it() -> None:
    def config(token: str) -> Config:
        return Config.model_validate({
            "credentials": {"ci": {"bearer": {"token": token}},
                            "other": {"bearer": {"token": "o"}}},
            "targets": [
                {"name": "uses", "url": "http://127.0.0.1:1/a", "credential": "ci",
                 "success_threshold": 1},
                {"name": "other", "url": "http://127.0.0.1:1/b", "credential": "other",
                 "success_threshold": 1},
                {"name": "plain", "url": "http://127.0.0.1:1/c", "success_threshold": 1}]})

    r = Readiness(config("token-1"))
    for name in ("uses", "other", "plain"):
        r.observe(ok(name), 1.0)
    assert r.reconfigure(config("token-1")).changed == [], "an equal file changes nothing"
    assert r.reconfigure(config("token-2")).changed == ["uses"]
    states = {t.name: t.state for t in r.verdict(1.5).targets}
    assert states == {"uses": "pending", "other": "ready", "plain": "ready"}


def test_a_result_older_than_two_intervals_plus_timeout_is_stale() -> None:
    cfg = make_config({"success_threshold": 1, "interval": "10s", "timeout": "5s"},
                      {"success_threshold": 1, "interval": "10s", "timeout": "5s",
                       "critical": False})
    r = Readiness(cfg)
    r.observe(ok("t0"), 100.0)
    r.observe(ok("t1"), 100.0)
    assert r.verdict(125.0).ready, "exactly 2 x 10s + 5s old still counts"
    assert r.ready_flags(125.0) == (True, [("t0", True), ("t1", True)])
    v = r.verdict(135.5)
    t0, t1 = v.targets
    assert not v.ready and (t0.state, t0.ready, t0.failure) == ("stale", False, None)
    assert t0.detail.startswith("no result for 35.5s (stale after 25s"), t0.detail
    assert t0.detail.endswith("last known ready") and t0.since == 125.0
    assert v.since == 125.0, "the gate closed when the evidence ran out"
    assert t1.state == "stale", "a non-critical target is stale too (it does not gate)"
    assert r.ready_flags(135.5) == (False, [("t0", False), ("t1", False)])
    assert Verdict.from_dict(v.to_dict()).targets[0].state == "stale"
    transition = r.observe(ok("t0"), 140.0)
    assert transition is not None and (transition.old, transition.new) == ("stale", "ready")
    v = r.verdict(140.0)
    assert v.ready and v.since == 140.0 and v.targets[0].since == 140.0


def test_reports_name_a_stale_target_and_its_age() -> None:
    from probe.report import render_github, render_junit, render_text

    r = Readiness(make_config({"success_threshold": 1}))
    r.observe(ok(), 0.0)
    v = r.verdict(10.0)
    text = render_text(v)
    assert text.startswith("FAIL t0  stale: no result for 10.0s (stale after 3s"), text
    assert "waiting on t0 (stale)" in text
    assert 'type="stale"' in render_junit(v) and "no result for 10.0s" in render_junit(v)
    assert render_github(v).startswith("::error title=t0%3A stale::stale: no result for 10.0s")


def test_stale_failing_target_keeps_its_cause_in_the_detail() -> None:
    r = Readiness(make_config({"failure_threshold": 1}))
    r.observe(bad(), 0.0)
    (t0,) = r.verdict(60.0).targets
    assert t0.state == "stale"
    assert t0.detail.endswith("last known failing (http_status: HTTP 503 (expected 200))")


@pytest.mark.parametrize(("expected", "served", "match"), [
    ("9aca97a", "9aca97a0f3c1b2d4e5f60718293a4b5c6d7e8f90", True),
    ("9aca97a0f3c1b2d4e5f60718293a4b5c6d7e8f90", "9aca97a", True),
    ("9ACA97A", "9aca97a0f3", True),
    ("9aca97", "9aca97a0f3c1b2d4e5f60718293a4b5c6d7e8f90", False),  # 6 characters: too short
    ("9aca97b", "9aca97a0f3c1b2d4e5f60718293a4b5c6d7e8f90", False),
    ("1.2", "1.2.3", False), ("v1.2.3", "v1.2.3", True), ("release-9aca97a", "9aca97a", False),
    ("abc", None, False),
])
def test_a_git_sha_matches_by_prefix_other_versions_exactly(
    expected: str, served: str | None, match: bool,
) -> None:
    from probe.version_match import version_matches

    assert version_matches(expected, served) is match
    r = Readiness(make_config({"success_threshold": 1, "version_path": "v"}),
                  expect_version=expected)
    r.observe(ok(version=served), 1.0)
    assert r.verdict(1.0).ready is match


def test_to_dict_has_the_design_shape_and_round_trips() -> None:
    r = Readiness(make_config({"success_threshold": 1}, {}))
    r.observe(ok("t0", version="abc"), 1.0)
    r.observe(bad("t1"), 1.0)
    d = r.verdict(1.0).to_dict()
    assert set(d) >= {"ready", "targets"}
    keys = {"name", "kind", "critical", "ready", "state", "failure", "detail", "status_code",
            "close_code", "version", "latency_ms"}
    assert all(keys <= set(t) for t in d["targets"])
    assert d["targets"][1]["failure"] == "http_status"
    assert Verdict.from_dict(d) == r.verdict(1.0)


@pytest.mark.parametrize("bad_input", [None, [], {"ready": "yes"}, {"ready": True, "targets": 3},
                                       {"ready": True, "targets": [{"state": "ready"}]},
                                       {"ready": True, "targets": [{"name": "a", "state": "x"}]}])
def test_from_dict_rejects_what_is_not_a_verdict(bad_input: Any) -> None:
    with pytest.raises(ValueError):
        Verdict.from_dict(bad_input)


def test_nearest_rank_percentiles() -> None:
    twenty = [float(i) for i in range(1, 21)]
    assert percentile(twenty, 95) == 19.0
    assert percentile(twenty, 50) == 10.0
    assert percentile(range(1, 101), 99) == 99
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


# --- properties of the state machine -----------------------------------------------------------


def reference_state(results: list[bool], s: int, f: int) -> str:
    """Independent definition: the kind of the last completed run of >= s successes or >= f
    failures; pending if none ever completed."""
    state = "pending"
    run_ok = run_bad = 0
    for r in results:
        run_ok, run_bad = (run_ok + 1, 0) if r else (0, run_bad + 1)
        if run_ok >= s:
            state = "ready"
        elif run_bad >= f:
            state = "failing"
    return state


thresholds = st.integers(min_value=1, max_value=5)
sequences = st.lists(st.booleans(), max_size=40)


def feed(results: list[bool], s: int, f: int) -> tuple[Readiness, list[tuple[str, Any]]]:
    r = Readiness(make_config({"success_threshold": s, "failure_threshold": f}))
    trail = []
    for i, good in enumerate(results):
        tr = r.observe(ok() if good else bad(), float(i))
        trail.append((r.verdict(float(i)).targets[0].state, tr))
    return r, trail


@FAST
@given(sequences, thresholds, thresholds)
def test_state_matches_the_run_based_definition_after_every_result(
        results: list[bool], s: int, f: int) -> None:
    _, trail = feed(results, s, f)
    for i, (state, _) in enumerate(trail):
        assert state == reference_state(results[: i + 1], s, f)


@FAST
@given(sequences, thresholds, thresholds)
def test_transitions_are_returned_exactly_on_state_changes(
        results: list[bool], s: int, f: int) -> None:
    _, trail = feed(results, s, f)
    previous = "pending"
    for state, tr in trail:
        if state == previous:
            assert tr is None
        else:
            assert tr is not None and (tr.old, tr.new) == (previous, state)
        previous = state


@FAST
@given(sequences, thresholds, thresholds)
def test_ready_needs_success_threshold_consecutive_successes(
        results: list[bool], s: int, f: int) -> None:
    _, trail = feed(results, s, f)
    first_ready = next((i for i, (state, _) in enumerate(trail) if state == "ready"), None)
    if first_ready is not None:
        assert sum(results[: first_ready + 1]) >= s, "never ready before s successes"
    for i, (_, tr) in enumerate(trail):
        if tr is not None and tr.new == "ready":
            assert all(results[i - s + 1: i + 1]) and i + 1 >= s


@FAST
@given(sequences, thresholds, thresholds)
def test_trailing_runs_decide_the_state(results: list[bool], s: int, f: int) -> None:
    r, _ = feed(results, s, f)
    now = float(len(results))  # a second after the last result: fresh
    t = r.verdict(now).targets[0]
    if len(results) >= f and not any(results[-f:]):
        assert t.state == "failing" and not t.ready and not r.verdict(now).ready
        assert t.failure == "http_status"
    if len(results) >= s and all(results[-s:]):
        assert t.state == "ready" and t.ready
    if t.ready:
        assert t.consecutive_failures < f


@FAST
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(list(Failure)), st.text(max_size=10),
                          st.floats(0.0, 10.0)), max_size=30), thresholds, thresholds)
def test_state_depends_only_on_the_success_sequence(
        results: list[tuple[bool, Failure, str, float]], s: int, f: int) -> None:
    plain, _ = feed([good for good, *_ in results], s, f)
    r = Readiness(make_config({"success_threshold": s, "failure_threshold": f}))
    for i, (good, failure, detail, duration) in enumerate(results):
        outcome = (ok(duration=duration) if good else
                   Outcome.failed("t0", "http", failure, detail, duration))
        r.observe(outcome, 1000.0 - i)  # times need not even increase
    a, b = r.verdict(0.0).targets[0], plain.verdict(0.0).targets[0]
    assert (a.state, a.consecutive_successes, a.consecutive_failures) == (
        b.state, b.consecutive_successes, b.consecutive_failures)


@FAST
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=60),
       st.lists(st.booleans(), min_size=3, max_size=3), thresholds, thresholds)
def test_gate_is_ready_exactly_when_every_critical_target_is(
        results: list[tuple[int, bool]], critical: list[bool], s: int, f: int) -> None:
    cfg = make_config(*({"critical": c, "success_threshold": s, "failure_threshold": f}
                        for c in critical))
    r = Readiness(cfg)
    per_target: dict[int, list[bool]] = {0: [], 1: [], 2: []}
    for i, (which, good) in enumerate(results):
        name = f"t{which}"
        r.observe(ok(name) if good else bad(name), float(i))
        per_target[which].append(good)
        v = r.verdict(float(i))
        assert v.ready == all(t.ready for t in v.targets if t.critical)
        for j, seq in per_target.items():
            if critical[j] and len(seq) >= f and not any(seq[-f:]):
                assert not v.ready, "never ready while a critical target's last f all failed"
            if critical[j] and not seq:
                assert not v.ready, "never ready while a critical target was never probed"


@FAST
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1,
                max_size=200), st.sampled_from([50.0, 95.0, 99.0, 100.0]))
def test_percentile_is_nearest_rank(samples: list[float], p: float) -> None:
    value = percentile(samples, p)
    assert value in samples
    n = len(samples)
    assert sum(x <= value for x in samples) >= math.ceil(p / 100 * n)
    assert sum(x < value for x in samples) < math.ceil(p / 100 * n)


@FAST
@given(st.lists(st.tuples(st.booleans(), st.floats(0.001, 0.3)), max_size=40),
       st.integers(1, 10), st.integers(1, 10))
def test_ready_with_a_latency_target_means_the_window_is_within_it(
        results: list[tuple[bool, float]], window: int, min_samples: int) -> None:
    min_samples = min(min_samples, window)
    r = Readiness(make_config({"success_threshold": 1, "failure_threshold": 2, "latency": {
        "p95": "100ms", "window": window, "min_samples": min_samples}}))
    successes: list[float] = []
    for i, (good, seconds) in enumerate(results):
        r.observe(ok(duration=seconds) if good else bad(), float(i))
        if good:
            successes.append(seconds)
        t = r.verdict(float(i)).targets[0]
        kept = successes[-window:]
        if t.ready and len(kept) >= min_samples:
            assert percentile(kept, 95) <= 0.100
        if t.state == "ready" and len(kept) >= min_samples and percentile(kept, 95) > 0.100:
            assert not t.ready and t.failure == "latency"


# --- the hot path agrees with the full verdict -----------------------------------------------


@FAST
@given(
    bounds=st.fixed_dictionaries({}, optional={
        "p50": st.sampled_from([0.02, 0.05]), "p95": st.sampled_from([0.05, 0.1]),
        "p99": st.sampled_from([0.1, 0.2])}),
    window=st.integers(1, 12), min_samples=st.integers(1, 12),
    expect_version=st.sampled_from([None, "v1"]),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.2, 0.3]),
                             st.sampled_from([None, "v1", "v2"]), st.booleans()), max_size=60),
)
@example(bounds={"p95": 0.05}, window=3, min_samples=1, expect_version=None,
         steps=[(True, 0.05, None, True)])  # a quantile exactly at its bound is not a breach
def test_cheap_ready_never_disagrees_with_the_full_verdict(
    bounds: dict[str, float], window: int, min_samples: int, expect_version: str | None,
    steps: list[tuple[bool, float, str | None, bool]],
) -> None:
    """`observe` keeps the gate with `_ready` (no sorting, no strings); `verdict` explains with
    `_judge`. Over any results, including samples exactly at a bound, the two must agree, and
    the sorted copy of the window must be the window sorted."""
    from probe.readiness import _judge, _ready

    latency = ({**bounds, "window": window, "min_samples": min(min_samples, window)}
               if bounds else None)
    cfg = make_config({"success_threshold": 1, "failure_threshold": 1, "version_path": "$.v",
                       **({"latency": latency} if latency else {})}, expect_version=expect_version)
    r = Readiness(cfg)
    for i, (success, seconds, version, has_total) in enumerate(steps):
        lat = {"total": seconds} if has_total else {}
        r.observe(ok(duration=seconds, latency=lat, version=version) if success else
                  bad(version=version), float(i))
        track = r._tracks["t0"]
        windows = track.latency
        assert windows.ordered == sorted(windows.windows.get("total", ()))
        full = _judge(track, r.expect_version, float(i))
        assert _ready(track, r.expect_version, float(i)) == full.ready
        window = list(windows.windows.get("total", ()))  # an independent model of "ready"
        breached = latency is not None and len(window) >= latency["min_samples"] and any(
            round(percentile(window, float(label[1:])) * 1000, 3) > bound * 1000
            for label, bound in bounds.items())
        wrong_build = expect_version is not None and track.version != expect_version
        assert full.ready == (track.state == "ready" and not wrong_build and not breached)
        assert full.ready or full.failure is not None or track.state != "ready"
        assert r.verdict(float(i)).ready == full.ready == (not r._blocking)
        # what /metrics exports
        assert r.ready_flags(float(i)) == (full.ready, [("t0", full.ready)])

"""Property tests: over random fault sequences, the gate never says ready falsely.

The gate is what CI trusts, so it is checked against an independent reference model built from
readiness.py's documented rules (not its code): a target's state is that of the most recent
moment a run of >= success_threshold successes or >= failure_threshold failures was complete
(`pending` if none); a `ready` target is still not ready on a latency breach (nearest-rank
percentile over the last `window` successful samples, once `min_samples` exist) or on a version
mismatch; the gate is ready when every critical target is ready. Reloads (removing, re-adding,
re-flagging targets) are part of the sequences: unchanged targets keep their history, a changed
one (re-flagged) starts again from no results. Staleness and credential changes are covered by
the stateful test in test_readyz_stateful.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from probe.config import Config
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness, Verdict

FAILURES = [f for f in Failure if f is not Failure.LATENCY]  # latency is a window verdict only
DURATIONS = [0.01, 0.05, 0.1, 0.3]


@dataclass
class Spec:
    name: str
    success_threshold: int
    failure_threshold: int
    critical: bool
    latency: dict[str, Any] | None
    version_path: bool

    def as_target(self) -> dict[str, Any]:
        t: dict[str, Any] = {
            "name": self.name, "url": f"http://127.0.0.1:9/{self.name}",
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold, "critical": self.critical,
        }
        if self.latency is not None:
            t["latency"] = self.latency
        if self.version_path:
            t["version_path"] = "version"
        return t


@dataclass
class Model:
    """The reference: everything derived from the full result history of each target."""

    spec: Spec
    results: list[Outcome] = field(default_factory=list)

    def state(self) -> str:
        state, run_ok, run_len = "pending", None, 0
        for o in self.results:
            run_len = run_len + 1 if o.success == run_ok else 1
            run_ok = o.success
            if run_ok and run_len >= self.spec.success_threshold:
                state = "ready"
            elif not run_ok and run_len >= self.spec.failure_threshold:
                state = "failing"
        return state

    def version(self) -> str | None:
        reported = [o.version for o in self.results if o.version is not None]
        return reported[-1] if reported else None

    def latency_breached(self) -> bool:
        lat = self.spec.latency
        if lat is None:
            return False
        window = [o.duration for o in self.results if o.success][-lat["window"]:]
        if len(window) < lat["min_samples"]:
            return False
        ordered = sorted(window)
        p95 = ordered[min(max(1, math.ceil(0.95 * len(ordered))), len(ordered)) - 1]
        return p95 * 1000.0 > lat["p95"] * 1000.0

    def ready(self, expect_version: str | None) -> bool:
        if self.state() != "ready":
            return False
        if expect_version and self.spec.version_path and self.version() != expect_version:
            return False
        return not self.latency_breached()

    def last_n_all_failed(self) -> bool:
        n = self.spec.failure_threshold
        return len(self.results) >= n and not any(o.success for o in self.results[-n:])


def config_of(specs: list[Spec], expect_version: str | None) -> Config:
    """An expected version only where some target has a version_path (else it is invalid)."""
    return Config.model_validate({
        "expect_version": expect_version if any(s.version_path for s in specs) else None,
        "targets": [s.as_target() for s in specs],
    })


specs_st = st.lists(
    st.builds(
        lambda st_, ft, crit, lat, vp: (st_, ft, crit, lat, vp),
        st.integers(1, 4), st.integers(1, 4), st.booleans(),
        st.one_of(st.none(), st.fixed_dictionaries({
            "p95": st.sampled_from([0.04, 0.2]), "window": st.integers(1, 8),
            "min_samples": st.integers(1, 4),
        }).filter(lambda d: d["min_samples"] <= d["window"])),
        st.booleans(),
    ),
    min_size=1, max_size=4,
)

event_st = st.one_of(
    st.tuples(st.just("probe"), st.integers(0, 3), st.booleans(), st.sampled_from(FAILURES),
              st.sampled_from(DURATIONS), st.sampled_from([None, "v1", "v2"])),
    st.tuples(st.sampled_from(["toggle_critical", "remove", "readd"]), st.integers(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(raw_specs=specs_st, expect_version=st.sampled_from([None, "v1"]),
       events=st.lists(event_st, max_size=80))
def test_gate_matches_reference_and_never_ready_falsely(
    raw_specs: list[tuple[Any, ...]], expect_version: str | None, events: list[tuple[Any, ...]]
) -> None:
    specs = [Spec(f"t{i}", *raw) for i, raw in enumerate(raw_specs)]
    active = list(specs)
    models = {s.name: Model(s) for s in specs}
    readiness = Readiness(config_of(active, expect_version))
    prev_gate: bool | None = None
    for step, event in enumerate(events):
        now = 1000.0 + step
        idx = event[1] % len(specs)
        spec = specs[idx]
        if event[0] == "probe":
            if spec not in active:
                continue
            _, _, ok, failure, duration, version = event
            outcome = (
                Outcome(spec.name, "http", True, duration, version=version) if ok else
                Outcome.failed(spec.name, "http", failure, f"{failure} detail {step}", duration,
                               version=version)
            )
            before = models[spec.name].state()
            models[spec.name].results.append(outcome)
            transition = readiness.observe(outcome, now)
            after = models[spec.name].state()
            if before == after:
                assert transition is None
            else:
                assert transition is not None
                assert (transition.old, transition.new, transition.at) == (before, after, now)
        elif event[0] == "toggle_critical":
            spec.critical = not spec.critical
            if spec in active:  # a changed definition: proven again from nothing
                models[spec.name] = Model(spec)
            readiness.reconfigure(config_of(active, expect_version))
        elif event[0] == "remove":
            if len(active) > 1 and spec in active:
                active.remove(spec)
                readiness.reconfigure(config_of(active, expect_version))
        elif spec not in active:  # readd: a target that comes back starts afresh
            active.append(spec)
            models[spec.name] = Model(spec)
            readiness.reconfigure(config_of(active, expect_version))

        verdict = readiness.verdict(now)
        check_verdict(verdict, [models[s.name] for s in active], expect_version)
        if prev_gate is not None and verdict.ready != prev_gate and event[0] == "probe":
            assert verdict.since == now
        assert verdict.since is None or verdict.since <= now
        prev_gate = verdict.ready


def check_verdict(verdict: Verdict, models: list[Model], expect_version: str | None) -> None:
    by_name = {t.name: t for t in verdict.targets}
    assert set(by_name) == {m.spec.name for m in models}
    for m in models:
        tv = by_name[m.spec.name]
        assert tv.critical == m.spec.critical
        assert tv.state == m.state(), (m.spec, [o.success for o in m.results])
        assert tv.ready == m.ready(expect_version)
        if m.last_n_all_failed():
            # The headline invariant: a target whose last failure_threshold results all failed is
            # failing, is not ready, and names the class of its last failure.
            assert tv.state == "failing" and not tv.ready
            assert tv.failure == m.results[-1].failure
            assert m.results[-1].detail in tv.detail
        if tv.state == "failing":
            last_failed = [o for o in m.results if not o.success][-1]
            assert tv.failure == last_failed.failure
        if not tv.ready and tv.state == "ready":
            assert tv.failure in (Failure.LATENCY, Failure.VERSION_MISMATCH)
    critical = [m for m in models if m.spec.critical]
    assert verdict.ready == all(m.ready(expect_version) for m in critical)
    if any(m.last_n_all_failed() for m in critical):
        assert verdict.ready is False
    assert Verdict.from_dict(verdict.to_dict()).ready == verdict.ready


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(1, 5), prefix=st.lists(st.booleans(), max_size=20),
       failures=st.lists(st.sampled_from(FAILURES), min_size=1, max_size=10))
def test_failures_after_any_history_close_the_gate(
    threshold: int, prefix: list[bool], failures: list[Failure]
) -> None:
    """However well a critical target did before, `failure_threshold` failures in a row close the
    gate at once, and the reason given is the class of the latest failure."""
    cfg = Config.model_validate({"targets": [
        {"name": "crit", "url": "http://127.0.0.1:9/", "failure_threshold": threshold},
        {"name": "other", "url": "http://127.0.0.1:9/o", "critical": False},
    ]})
    r = Readiness(cfg)
    now = 0.0
    for ok in prefix:
        now += 1
        r.observe(Outcome("crit", "http", True, 0.01) if ok else
                  Outcome.failed("crit", "http", Failure.TIMEOUT, "t", 1.0), now)
    run = (failures * threshold)[:threshold]
    for i, f in enumerate(run):
        now += 1
        r.observe(Outcome("other", "http", True, 0.01), now)  # a healthy non-critical target
        r.observe(Outcome.failed("crit", "http", f, f"boom {i}", 1.0), now)
    v = r.verdict(now)
    assert v.ready is False
    crit = next(t for t in v.targets if t.name == "crit")
    assert (crit.state, crit.failure, crit.detail) == ("failing", run[-1], f"boom {threshold - 1}")
    assert next(t.name for t in v.not_ready()) == "crit"

"""A hypothesis state machine over reloads, probe results and the clock: /readyz's decision
(`Readiness.verdict(now).ready`, which /readyz answers as 200 or 503) is never ready while any
critical target is failing, stale, or changed by a reload and not yet re-proven.

The reference model is built from the documented rules, not from readiness.py: per target, the
results since its definition last changed (any field, or the token of the credential it uses);
its state is that of the last complete run of >= success_threshold successes or
>= failure_threshold failures (`pending` if none); its evidence is fresh while the last result is
at most 2 x interval + timeout old. The gate is ready exactly when every critical target is ready
and fresh. Pure code, so thousands of steps take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from probe.config import Config
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness

NAMES = ("t0", "t1", "t2")


@dataclass(frozen=True)
class Spec:
    """The part of a target's definition the machine varies."""

    path: str = "/a"
    interval: float = 1.0
    success_threshold: int = 2
    failure_threshold: int = 2
    critical: bool = True
    credential: bool = False  # uses credential `ci`

    def as_target(self, name: str) -> dict[str, Any]:
        t: dict[str, Any] = {
            "name": name, "url": f"http://127.0.0.1:9{self.path}", "interval": self.interval,
            "timeout": self.interval / 2, "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold, "critical": self.critical}
        if self.credential:
            t["credential"] = "ci"
        return t


@dataclass
class Model:
    spec: Spec
    results: list[tuple[float, bool]] = field(default_factory=list)

    def state(self) -> str:
        state, run_ok, run_len = "pending", None, 0
        for _, ok in self.results:
            run_len = run_len + 1 if ok == run_ok else 1
            run_ok = ok
            if ok and run_len >= self.spec.success_threshold:
                state = "ready"
            elif not ok and run_len >= self.spec.failure_threshold:
                state = "failing"
        return state

    def fresh(self, now: float) -> bool:
        limit = 2 * self.spec.interval + self.spec.interval / 2
        return bool(self.results) and now - self.results[-1][0] <= limit

    def shown(self, now: float) -> str:
        return "stale" if self.results and not self.fresh(now) else self.state()

    def ready(self, now: float) -> bool:
        return self.state() == "ready" and self.fresh(now)


specs = st.builds(
    Spec, path=st.sampled_from(["/a", "/b"]), interval=st.sampled_from([1.0, 2.0]),
    success_threshold=st.integers(1, 3), failure_threshold=st.integers(1, 3),
    critical=st.booleans(), credential=st.booleans())


class ReadyzMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.token = "token-0"
        self.models: dict[str, Model] = {n: Model(Spec()) for n in NAMES}
        self.readiness = Readiness(self.config())

    def config(self) -> Config:
        return Config.model_validate({
            "credentials": {"ci": {"bearer": {"token": self.token}}},
            "targets": [m.spec.as_target(n) for n, m in self.models.items()]})

    @rule(name=st.sampled_from(NAMES), ok=st.booleans())
    def probe(self, name: str, ok: bool) -> None:
        outcome = (Outcome(name, "http", True, 0.01) if ok else
                   Outcome.failed(name, "http", Failure.REFUSED, "refused", 0.01))
        self.models[name].results.append((self.now, ok))
        self.readiness.observe(outcome, self.now)

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.0, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(name=st.sampled_from(NAMES), spec=specs)
    def reload_with(self, name: str, spec: Spec) -> None:
        """A reload that redefines one target (perhaps to what it already was)."""
        if spec != self.models[name].spec:
            self.models[name] = Model(spec)  # changed: proven again from no results
        self.readiness.reconfigure(self.config())

    @rule()
    def rotate_token(self) -> None:
        """A reload that changes only the credential: its users are redefined."""
        self.token = f"token-{int(self.token.split('-')[1]) + 1}"
        for name, m in self.models.items():
            if m.spec.credential:
                self.models[name] = Model(m.spec)
        self.readiness.reconfigure(self.config())

    @rule(name=st.sampled_from(NAMES))
    def flip_critical(self, name: str) -> None:
        m = self.models[name]
        self.models[name] = Model(replace(m.spec, critical=not m.spec.critical))
        self.readiness.reconfigure(self.config())

    @invariant()
    def gate_is_never_ready_without_fresh_proof(self) -> None:
        verdict = self.readiness.verdict(self.now)
        by_name = {t.name: t for t in verdict.targets}
        for name, m in self.models.items():
            tv = by_name[name]
            assert tv.state == m.shown(self.now), (name, m, self.now)
            assert tv.ready == m.ready(self.now)
        critical = [m for m in self.models.values() if m.spec.critical]
        if any(m.state() != "ready" or not m.fresh(self.now) for m in critical):
            assert not verdict.ready  # failing, pending (new or changed), or stale
        assert verdict.ready == all(m.ready(self.now) for m in critical)
        gate, flags = self.readiness.ready_flags(self.now)  # what /metrics exports
        assert gate == verdict.ready
        assert dict(flags) == {t.name: t.ready for t in verdict.targets}
        assert verdict.since is None or verdict.since <= self.now


ReadyzMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40,
                                           deadline=None)
test_readyz_never_ready_without_fresh_proof = ReadyzMachine.TestCase

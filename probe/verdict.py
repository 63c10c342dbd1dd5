"""The gate's answer as data: per-target TargetVerdicts, the whole Verdict, and the Transition
logged when a target's state changes.

Kept apart from probe.readiness (which computes them from probe results) because it is a
different job: parsing and printing a verdict, as the clients of `/readyz` do (`probe gate`, the
CI reports, the Prometheus gate), needs neither the config nor the latency windows.
probe.readiness re-exports every name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from probe.outcome import Failure

__all__ = ["STATES", "State", "TargetVerdict", "Transition", "Verdict"]

State = Literal["pending", "ready", "failing", "stale"]
STATES: tuple[State, ...] = ("pending", "ready", "failing", "stale")


@dataclass(frozen=True)
class Transition:
    """A target's state changed; the daemon logs one line per transition, not one per probe."""

    target: str
    old: State
    new: State
    failure: Failure | None
    detail: str
    at: float
    trace_id: str | None = None  # the probe's traceparent trace id, to find it in the traces


@dataclass(frozen=True)
class TargetVerdict:
    name: str
    kind: str
    critical: bool
    ready: bool
    state: State
    failure: str | None
    detail: str
    status_code: int | None
    close_code: int | None
    version: str | None
    latency_ms: dict[str, float]  # p50/p95/p99 of the window, target_pXX for each bound set
    since: float | None = None  # when the current state began (first probe, for pending)
    last_probe_at: float | None = None
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    trace_id: str | None = None  # the trace id of the probe `detail` describes (see _trace)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TargetVerdict:
        """Parse one entry of `/readyz` JSON; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"a target entry must be an object, got {type(data).__name__}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a target entry has no name")
        state = data.get("state", "pending")
        if state not in STATES:
            raise ValueError(f"target {name!r}: unknown state {state!r}")
        latency = data.get("latency_ms") or {}
        if not isinstance(latency, dict):
            raise ValueError(f"target {name!r}: latency_ms must be an object")
        return cls(
            name=name, kind=str(data.get("kind", "")), critical=bool(data.get("critical", True)),
            ready=data.get("ready") is True, state=state,
            failure=_opt(data.get("failure"), str), detail=str(data.get("detail") or ""),
            status_code=_opt(data.get("status_code"), int),
            close_code=_opt(data.get("close_code"), int), version=_opt(data.get("version"), str),
            latency_ms={str(k): float(v) for k, v in latency.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)},
            since=_opt(data.get("since"), float),
            last_probe_at=_opt(data.get("last_probe_at"), float),
            consecutive_successes=int(data.get("consecutive_successes") or 0),
            consecutive_failures=int(data.get("consecutive_failures") or 0),
            trace_id=_opt(data.get("trace_id"), str),
        )


def _opt(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    ready: bool
    targets: list[TargetVerdict]
    since: float | None = None  # when the gate's current answer began

    def to_dict(self) -> dict[str, Any]:
        """The `--format json` / `/readyz` shape of DESIGN.md (plus the `since` fields)."""
        return {"ready": self.ready, "since": self.since,
                "targets": [t.to_dict() for t in self.targets]}

    def not_ready(self) -> list[TargetVerdict]:
        return [t for t in self.targets if not t.ready]

    @classmethod
    def from_dict(cls, data: Any) -> Verdict:
        if not isinstance(data, dict) or not isinstance(data.get("ready"), bool):
            raise ValueError('expected a JSON object with a boolean "ready"')
        targets = data.get("targets") or []
        if not isinstance(targets, list):
            raise ValueError('"targets" must be a list')
        return cls(ready=data["ready"], targets=[TargetVerdict.from_dict(t) for t in targets],
                   since=_opt(data.get("since"), float))


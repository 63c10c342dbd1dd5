"""How long a latency spike keeps a target not ready, by window kind and probe interval (issue 14).

A target with `latency: {p95: 100ms}` is probed at `interval`; a spike of `slow` probes in a
row take 300 ms, then 20 ms again. Readiness is pure, so the scenario is replayed at made-up
times (no waiting): printed are the seconds from the spike's end to the first probe that finds
the target ready again ("-": the spike never breached the target). Compared: a count window of
100 samples (the window before time windows) and the default time window (5m), at intervals of
1 s, 5 s and 15 s, for spikes of 10 probes (10 s at a 1 s interval) and 60 probes.

    python3 bench/latency_recovery.py
"""

from __future__ import annotations

from probe.config import Config
from probe.outcome import Outcome
from probe.readiness import Readiness

SLOW, FAST = 0.300, 0.020


def recovery(window: int | str, interval: float, slow: int) -> float | None:
    """Seconds from the spike's end until the target is ready again (None: never breached)."""
    cfg = Config.model_validate({"targets": [{
        "name": "t", "url": "http://127.0.0.1:1/", "interval": f"{interval}s",
        "timeout": "1s", "success_threshold": 1,
        "latency": {"p95": "100ms", "window": window, "min_samples": 1}}]})
    r = Readiness(cfg)
    now = 0.0
    while now < 400.0:  # healthy first: a full window of fast samples
        r.observe(Outcome(target="t", kind="http", success=True, duration=FAST), now)
        now += interval
    breached = False
    for _ in range(slow):
        r.observe(Outcome(target="t", kind="http", success=True, duration=SLOW), now)
        breached = breached or not r.verdict(now).ready
        now += interval
    end = now - interval
    if not breached:
        return None
    while True:
        r.observe(Outcome(target="t", kind="http", success=True, duration=FAST), now)
        if r.verdict(now).ready:
            return now - end
        now += interval


def main() -> None:
    print(f"{'window':>8} {'interval':>8} {'spike':>10} {'not ready after it':>19}")
    for slow in (10, 60):
        for window in (100, "5m"):
            for interval in (1.0, 5.0, 15.0):
                took = recovery(window, interval, slow)
                shown = "-" if took is None else f"{took:.0f}s"
                print(f"{window!s:>8} {interval:>7g}s {slow:>4} probes {shown:>19}")


if __name__ == "__main__":
    main()

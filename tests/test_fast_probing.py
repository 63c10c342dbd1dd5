"""Fast to a verdict: an undecided target (pending, or short of latency samples) is probed again
FAST_INTERVAL after its probe ended instead of waiting out its interval, a bounded number of
times; a decided one keeps its cadence. (The time-to-ready figures are bench/time_to_ready.py.)

The rule is scheduler.next_probe, a pure function, tested here without a clock; the daemon and
`probe check` are tested with intervals far longer than the test may take (30 s, success_threshold
2 and 3 latency samples), so only fast probing can make them ready before the test's deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import StartDaemon, until
from helpers import run_cli as run

from probe.config import Config, Target, parse_config
from probe.daemon.scheduler import FAST_INTERVAL, fast_budget, next_probe
from probe.twin import Twin

pytestmark = [pytest.mark.timeout(60)]

SLOW = """
defaults: {{interval: 30s, timeout: 2s, success_threshold: 2, failure_threshold: 2}}
targets:
  - {{name: health, url: "{url}/health", latency: {{p95: 1s, min_samples: 3, window: 10}}}}
"""


def slow_config(twin: Twin) -> Config:
    return parse_config(SLOW.format(url=twin.url), env={})


def target(**kw: object) -> Target:
    return parse_config("defaults: {interval: 10s, timeout: 2s}\ntargets:\n"
                        "  - {name: t, url: 'http://127.0.0.1:1/'}\n", env={}).targets[0] \
        .model_copy(update=kw)


def test_the_cadence_while_decided_and_fast_while_undecided() -> None:
    t = target()
    budget = fast_budget(t)
    assert budget == t.success_threshold + t.failure_threshold - 1
    # decided: the next slot of the cadence, fast probes replenished
    assert next_probe(t, 100.0, 100.2, False, 0) == (110.0, budget)
    # an overrun skips the missed slots instead of bursting
    assert next_probe(t, 100.0, 125.0, False, budget) == (130.0, budget)
    # undecided: FAST_INTERVAL after the probe ended, one fast probe used
    assert next_probe(t, 100.0, 100.2, True, budget) == (100.2 + FAST_INTERVAL, budget - 1)
    # never later than the cadence would be
    short = target(interval=0.5, timeout=0.5)
    assert next_probe(short, 100.0, 100.1, True, 3) == (100.5, 2)


def test_a_target_that_never_decides_is_back_at_its_cadence_after_the_budget() -> None:
    t = target(latency=None)
    left, at, fast = fast_budget(t), 0.0, 0
    for _ in range(20):  # a flapping target stays pending: undecided every time
        nxt, left = next_probe(t, at, at + 0.1, True, left)
        fast += nxt - at < t.interval - 1
        at = nxt
    assert fast == fast_budget(t), "fast probes are bounded per undecided stretch"


def test_the_budget_covers_the_latency_samples() -> None:
    (with_latency,) = parse_config(SLOW.format(url="http://127.0.0.1:1"), env={}).targets
    assert fast_budget(with_latency) == fast_budget(with_latency.model_copy(
        update={"latency": None})) + 3


async def test_the_daemon_calls_a_healthy_target_ready_long_before_its_interval(
        twin: Twin, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(slow_config(twin))
    readiness = daemon.runtime.readiness

    def decided() -> bool:
        tv = readiness.target("health", time.time())
        return tv is not None and tv.state == "ready" and not readiness.undecided("health")

    # 2 successes and 3 latency samples at a 30 s interval: 60 s at the cadence
    await until(decided, "ready with its latency verdict", within=25)
    probes = twin.requests("/health")
    assert 3 <= probes <= fast_budget(daemon.config.targets[0]), probes


async def test_probe_check_one_round_is_fast_too(twin: Twin, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(SLOW.format(url=twin.url), encoding="utf-8")
    assert await run("check", "-c", str(cfg)) == 0  # the test's 60 s timeout < 2 x 30 s
    assert "READY: 1/1" in capsys.readouterr().out
    assert twin.requests("/health") >= 3, "the latency verdict needs its 3 samples"

"""Time to a verdict: how long a healthy staging takes to be called ready, with and without fast
probing of undecided targets (issue 18).

Scenarios, each against the twin (healthy from the start) on loopback:
- `defaults`: one HTTP target with the README's defaults (interval 10s, success_threshold 2);
- `latency`: the same with `latency: {p95: 250ms}` (min_samples 5: a latency verdict needs 5);
- `example`: config/example.yaml (HTTP, an authenticated POST, a WebSocket session, two
  latency targets), its URLs pointed at the twin.
For each: `probe check` (one round, no --wait: until every target is decided), `probe check
--wait 2m` (until ready with the latency verdicts in), and the daemon (`probe run`, until
/readyz's verdict is ready), all in-process. "off" sets scheduler.FAST_INTERVAL to infinity,
which is the scheduling before fast probing (cadence only).

    python3 bench/time_to_ready.py            # ~3 min (the "off" runs wait out the intervals)
    python3 bench/time_to_ready.py --only on  # the current behaviour only, ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe.checkcmd import run_check  # noqa: E402
from probe.config import Config, parse_config  # noqa: E402
from probe.daemon import scheduler  # noqa: E402
from probe.daemon.run import Daemon  # noqa: E402
from probe.logging import configure  # noqa: E402
from probe.twin import Twin  # noqa: E402

TWIN_SECRET = "twin-dev-secret-not-for-production-use"


def configs(twin: Twin) -> dict[str, Config]:
    example = (ROOT / "config" / "example.yaml").read_text(encoding="utf-8")
    example = example.replace("http://127.0.0.1:8080", twin.url).replace(
        "ws://127.0.0.1:8080", twin.url.replace("http://", "ws://"))
    env = {"TWIN_JWT_SECRET": TWIN_SECRET}
    return {
        "defaults": parse_config(f"targets:\n  - {{name: health, url: \"{twin.url}/health\"}}\n",
                                 env={}),
        "latency": parse_config(f"targets:\n  - {{name: health, url: \"{twin.url}/health\", "
                                "latency: {p95: 250ms}}\n", env={}),
        "example": parse_config(example, env=env),
    }


async def daemon_ready(config: Config, within: float = 120.0) -> float:
    daemon = Daemon(config)
    t0 = time.monotonic()
    await daemon.start("127.0.0.1", 0)
    try:
        while time.monotonic() - t0 < within:
            if daemon.runtime.readiness.verdict(time.time()).ready:
                return time.monotonic() - t0
            await asyncio.sleep(0.02)
        return math.inf
    finally:
        await daemon.stop()


async def timed(coro_fn: object) -> tuple[float, bool]:
    t0 = time.monotonic()
    verdict = await coro_fn()  # type: ignore[operator]
    return time.monotonic() - t0, verdict.ready


async def main(only: str | None) -> None:
    modes = [m for m in ("off", "on") if only in (None, m)]
    configure(level="warning")  # the in-process daemons' state lines would drown the table
    twin = Twin()  # healthy from the start; checks JWTs with its dev secret
    await twin.start()
    rows = []
    try:
        for name, config in configs(twin).items():
            for mode in modes:
                scheduler.FAST_INTERVAL = math.inf if mode == "off" else 1.0
                one, ok1 = await timed(lambda c=config: run_check(c))
                wait, ok2 = await timed(lambda c=config: run_check(c, wait=120.0))
                gate = await daemon_ready(config)
                rows.append((name, mode, f"{one:.1f}s{'' if ok1 else ' (NOT READY)'}",
                             f"{wait:.1f}s{'' if ok2 else ' (NOT READY)'}", f"{gate:.1f}s"))
                print(*rows[-1], sep="\t", flush=True)
    finally:
        await twin.stop()
    print()
    print(f"{'config':<10} {'fast':<5} {'check (1 round)':>16} {'check --wait':>14} "
          f"{'daemon /readyz':>15}")
    for row in rows:
        print(f"{row[0]:<10} {row[1]:<5} {row[2]:>16} {row[3]:>14} {row[4]:>15}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("on", "off"), default=None)
    asyncio.run(main(parser.parse_args().only))

"""Loop lag beside hostile WebSocket servers (issue 13): does one target's traffic steal the loop?

    python bench/ws_hostile.py [--seconds 10] [--json OUT]

The fault servers of tests/faults run in a child process (`python -m faults`), so only the
prober's own work is on this loop: `ws_ping_flood` (pings as fast as they are read),
`ws_huge` (10 MiB messages; probed with a 16 MiB body_limit so they are read, and with the
default 1 MiB cap) and `ws_ok` as the neighbour. For each mode the hostile target is probed
back to back (an `until` step that never matches, 2 s) while the neighbour is probed every
100 ms (1 s timeout) and a ticker measures the loop's lag every 10 ms. Run on uvloop when
installed, as the daemon is. `PYTHONPATH=<other checkout>` measures another version of probe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, emit, fmt, pct, table  # noqa: E402

from probe.checks import CheckContext  # noqa: E402
from probe.checks.websocket import check  # noqa: E402
from probe.config import Config, Target  # noqa: E402
from probe.loop import run_loop  # noqa: E402

TICK = 0.01
NEVER = {"send": {"type": "ping"}, "until": {"regex": "^never$"}, "timeout": "2s"}
PING = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "1s"}
MODES = [  # (name, fault, body_limit)
    ("baseline (neighbour only)", None, None),
    ("ping flood", "ws_ping_flood", None),
    ("10 MiB messages, 16 MiB cap", "ws_huge", 16 << 20),
    ("10 MiB messages, 1 MiB cap", "ws_huge", None),
]


def target(name: str, url: str, messages: list[Any], **fields: Any) -> Target:
    spec = {"name": name, "url": url, "timeout": "3s", "interval": "10s", "messages": messages,
            **{k: v for k, v in fields.items() if v is not None}}
    return Config.model_validate({"targets": [spec]}).targets[0]


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - due))


async def run_mode(ports: dict[str, int], fault: str | None, limit: int | None,
                   seconds: float) -> dict[str, Any]:
    ctx = CheckContext()
    calm = target("calm", f"ws://127.0.0.1:{ports['ws_ok']}/ws", [PING])
    hostile = (target("hostile", f"ws://127.0.0.1:{ports[fault]}/ws", [NEVER], body_limit=limit)
               if fault else None)
    stop = asyncio.Event()
    lags: list[float] = []
    calm_results: Counter[str] = Counter()
    hostile_results: Counter[str] = Counter()

    async def neighbour() -> None:
        while not stop.is_set():
            outcome = await check(calm, ctx)
            calm_results[outcome.failure.value if outcome.failure else "ok"] += 1
            await asyncio.sleep(0.1)

    async def attacker() -> None:
        while hostile is not None and not stop.is_set():
            outcome = await check(hostile, ctx)
            hostile_results[outcome.failure.value if outcome.failure else "ok"] += 1

    tasks = [asyncio.create_task(c) for c in (ticker(lags, stop), neighbour(), attacker())]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return {"lag_p50_ms": pct(lags, 50) * 1e3, "lag_p99_ms": pct(lags, 99) * 1e3,
            "lag_max_ms": max(lags) * 1e3, "neighbour": dict(calm_results),
            "hostile": dict(hostile_results)}


async def run_all(ports: dict[str, int], seconds: float) -> dict[str, Any]:
    return {name: await run_mode(ports, fault, limit, seconds) for name, fault, limit in MODES}


def main(seconds: float) -> dict[str, Any]:
    """The fault servers in a child process (ended by closing its stdin), the modes in turn."""
    faults = sorted({f for _, f, _ in MODES if f} | {"ws_ok"})
    proc = subprocess.Popen([PY, "-m", "faults", *faults], cwd=ROOT / "tests",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        return run_loop(run_all(ports, seconds))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    result = main(args.seconds)
    rows = [(name, fmt(r["lag_p50_ms"], 1), fmt(r["lag_p99_ms"], 1), fmt(r["lag_max_ms"], 1),
             " ".join(f"{k}={v}" for k, v in sorted(r["neighbour"].items())),
             " ".join(f"{k}={v}" for k, v in sorted(r["hostile"].items())) or "-")
            for name, r in result.items()]
    print(table(f"loop lag beside hostile WebSocket servers ({args.seconds:g} s per mode)", rows,
                ["mode", "lag p50 ms", "p99 ms", "max ms", "neighbour", "hostile outcomes"]))
    emit({"bench": "ws_hostile", "started": started, "modes": result}, args.json)

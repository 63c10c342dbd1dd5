"""Hostile soak: the real daemon probing every hostile mode of tests/faults beside healthy targets.

    python bench/hostile_soak.py                 # 10 minutes
    python bench/hostile_soak.py --minutes 3

Every fault of tests/faults (HTTP_EXPECTED and WS_EXPECTED: endless trailers and
chunk extensions, header floods, 50 MB bodies, drips, slowloris, resets, ping floods, 10-20 MiB
WebSocket messages, ...) is one target, probed every --interval with --timeout, next to
--healthy healthy HTTP and as many healthy WebSocket targets probed every second. How it runs is
bench/soak.py's (whose helpers it uses): the fault servers in a child process, the daemon
(`probe.daemon.run.Daemon`, on uvloop with `probe run`'s GC settings) in this one, so RSS
(VmRSS), open fds and the event loop's lag are the prober's own.

Loop lag is measured two ways: a sampler task that sleeps 50 ms and records how late it wakes
(a loop stalled by one probe's work shows here at once), and the scheduler's own
probe_scheduler_lag_seconds p99 per sample window. Printed every --sample-every: RSS, fds,
tasks, loop lag max and p99, scheduler lag p99, probes; at the end start / end / max of each and
whether a healthy target ever failed, and each faulty target's classes. With --neighbour N a
child process also opens N idle connections to the daemon's own port every third sample period
and holds them for one (the daemon's server limits: probe/daemon/listener.py).

Verdict (exit 1 on any): a healthy target failed; RSS grew by more than 25 % + 20 MB from the
first sample after warm-up (the first 10 % of the run) to the last; fds grew by more than 20;
loop lag max over 250 ms after warm-up; a classified fault produced another class. Noise: on a
machine shared with other work the lag figures carry that work too (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import aiohttp  # noqa: E402
from _soak_metrics import Scrape, lag_p99, misclassified, parse, probes_total  # noqa: E402
from faults import HTTP_EXPECTED, WS_EXPECTED  # noqa: E402
from soak import open_fds, rss_mb, start_servers, stop_servers  # noqa: E402

from probe.config import load_config  # noqa: E402
from probe.daemon.run import Daemon, settle_gc  # noqa: E402
from probe.logging import configure  # noqa: E402
from probe.loop import run_loop  # noqa: E402

PING = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}}
TICK = 0.05  # the lag sampler's sleep


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    tasks: int
    lag_max_ms: float
    lag_p99_ms: float
    sched_p99_ms: float | None
    probes: int


def targets(ports: dict[str, int], healthy: int, interval: str, timeout: str
            ) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    out: list[dict[str, Any]] = []
    expected: dict[str, str | None] = {}
    for i in range(healthy):
        out.append({"name": f"healthy-http-{i}", "url": f"http://127.0.0.1:{ports['ok']}/h{i}",
                    "interval": "1s", "timeout": "1s", "expect": {"json": {"status": "healthy"}}})
        out.append({"name": f"healthy-ws-{i}", "url": f"ws://127.0.0.1:{ports['ws_ok']}/w{i}",
                    "interval": "1s", "timeout": "1s", "messages": [PING]})
    for fault in sorted(HTTP_EXPECTED):
        if fault != "ok":
            out.append({"name": f"http-{slug(fault)}", "url": f"http://127.0.0.1:{ports[fault]}/",
                        "interval": interval, "timeout": timeout})
            expected[out[-1]["name"]] = HTTP_EXPECTED[fault]
    for fault in sorted(WS_EXPECTED):
        if fault != "ws_ok":
            out.append({"name": f"ws-{slug(fault)}", "url": f"ws://127.0.0.1:{ports[fault]}/",
                        "interval": interval, "timeout": timeout, "messages": [PING]})
            expected[out[-1]["name"]] = WS_EXPECTED[fault]
    for t in out:
        if t["name"].startswith("healthy"):
            expected[t["name"]] = None
    return out, expected


def slug(fault: str) -> str:
    return fault.replace(":", "-").replace(",", "-")


async def lag_sampler(lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - t0 - TICK))


# A neighbour on the network: opens N connections to the daemon, sends nothing, holds them for
# a while, exits. A child process, so its sockets are not counted among the daemon's fds.
NEIGHBOUR = """
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        socks.append(s)
    except OSError:
        s.close()
print(len(socks), flush=True)
time.sleep(hold)
"""


async def neighbour_floods(port: int, n: int, every: float) -> None:
    """Every 3 samples: `n` idle connections to the daemon, held for one sample period."""
    while True:
        await asyncio.sleep(every * 2)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", NEIGHBOUR, str(port), str(n), str(every),
            stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            made = (await proc.stdout.readline()).decode().strip()
            print(f"       neighbour: {made} of {n} idle connections open", flush=True)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(0.99 * (len(xs) - 1))] if xs else 0.0


async def run(args: argparse.Namespace, config: Path, expected: dict[str, str | None]
              ) -> tuple[list[Sample], Scrape]:
    daemon = Daemon(load_config(config))
    url = await daemon.start("127.0.0.1", 0)
    settle_gc(daemon)
    lags: list[float] = []
    sampler = asyncio.create_task(lag_sampler(lags))
    port = int(url.rsplit(":", 1)[1])
    neighbour = (asyncio.create_task(neighbour_floods(port, args.neighbour, args.sample_every))
                 if args.neighbour else None)
    samples: list[Sample] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with aiohttp.ClientSession() as http:
            async def scrape() -> Scrape:
                async with http.get(f"{url}/metrics") as resp:
                    return parse(await resp.text())

            prev = await scrape()
            k = 0
            while loop.time() - start < args.minutes * 60:
                k += 1
                await asyncio.sleep(max(0.0, start + k * args.sample_every - loop.time()))
                window, lags[:] = lags[:], []
                cur = await scrape()
                sched = lag_p99(prev.lag_buckets, cur.lag_buckets)
                samples.append(Sample(
                    t=loop.time() - start, rss_mb=rss_mb(), fds=open_fds(),
                    tasks=len(asyncio.all_tasks()), lag_max_ms=max(window, default=0) * 1000,
                    lag_p99_ms=p99(window) * 1000,
                    sched_p99_ms=None if sched is None else sched * 1000,
                    probes=max(0, probes_total(cur) - probes_total(prev))))
                print(row(samples[-1]), flush=True)
                prev = cur
    finally:
        sampler.cancel()
        if neighbour is not None:
            neighbour.cancel()
            await asyncio.gather(neighbour, return_exceptions=True)
        await daemon.stop()
    return samples, prev


HEADER = (f"{'t':>6} {'rss MB':>8} {'fds':>5} {'tasks':>6} {'lag max':>8} {'lag p99':>8} "
          f"{'sched p99':>9} {'probes':>7}")


def row(s: Sample) -> str:
    sched = "-" if s.sched_p99_ms is None else f"{s.sched_p99_ms:.0f}ms"
    return (f"{s.t:5.0f}s {s.rss_mb:8.1f} {s.fds:5d} {s.tasks:6d} {s.lag_max_ms:6.0f}ms "
            f"{s.lag_p99_ms:6.0f}ms {sched:>9} {s.probes:7d}")


def report(samples: list[Sample], final: Scrape, expected: dict[str, str | None]) -> int:
    if not samples:
        print("no samples")
        return 1
    warm = [s for s in samples if s.t >= samples[-1].t * 0.1] or samples
    print("\n            start      end      max")
    for name, get in (("rss MB", lambda s: s.rss_mb), ("fds", lambda s: s.fds),
                      ("tasks", lambda s: s.tasks), ("lag max ms", lambda s: s.lag_max_ms),
                      ("lag p99 ms", lambda s: s.lag_p99_ms)):
        values = [get(s) for s in warm]
        print(f"{name:<10} {values[0]:8.1f} {values[-1]:8.1f} {max(values):8.1f}")
    healthy_failures = {n: v for (n, r), v in final.results.items()
                        if n.startswith("healthy") and r == "failure" and v}
    healthy_ok = sum(v for (n, r), v in final.results.items()
                     if n.startswith("healthy") and r == "success")
    print(f"\nhealthy targets: {healthy_ok:.0f} successes, failures: {healthy_failures or 'none'}")
    wrong = misclassified({n: e for n, e in expected.items() if not n.startswith("healthy")},
                          final)
    classes: dict[str, dict[str, float]] = {}
    for (n, f), v in final.failures.items():
        if v and not n.startswith("healthy"):
            classes.setdefault(n, {})[f] = v
    for (n, r), v in final.results.items():
        if r == "success" and v and not n.startswith("healthy"):
            classes.setdefault(n, {})["success"] = v
    print("faulty targets (class: count):")
    for name in sorted(classes):
        mark = "  MISCLASSIFIED" if name in wrong else ""
        print(f"  {name:<28} {json.dumps(classes[name])}{mark}")
    verdict = []
    if healthy_failures:
        verdict.append("a healthy target failed")
    if warm[-1].rss_mb > warm[0].rss_mb * 1.25 + 20:
        verdict.append(f"RSS grew {warm[0].rss_mb:.0f} -> {warm[-1].rss_mb:.0f} MB")
    if warm[-1].fds > warm[0].fds + 20:
        verdict.append(f"fds grew {warm[0].fds} -> {warm[-1].fds}")
    if max(s.lag_max_ms for s in warm) > 250:
        verdict.append(f"loop lag max {max(s.lag_max_ms for s in warm):.0f} ms")
    if wrong:
        verdict.append(f"misclassified: {sorted(wrong)}")
    print(f"\nload average: {os.getloadavg()[0]:.2f} (other work on this machine shows in lag)")
    print("verdict:", "; ".join(verdict) if verdict else "OK")
    return 1 if verdict else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--healthy", type=int, default=4, help="healthy HTTP (and as many WS) targets")
    p.add_argument("--interval", default="2s", help="of each faulty target")
    p.add_argument("--timeout", default="1s", help="of each faulty target")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    p.add_argument("--neighbour", type=int, default=0, metavar="N",
                   help="also a neighbour opening N idle connections to the daemon now and then")
    p.add_argument("--history", type=int, default=10,
                   help="results kept per target (small: full after warm-up, so growth is a leak)")
    args = p.parse_args()
    faults = ["ok", "ws_ok", *(f for f in sorted({*HTTP_EXPECTED, *WS_EXPECTED})
                               if f not in ("ok", "ws_ok"))]
    configure(level="error")  # not every faulty target's transition
    proc, ports = start_servers(faults)
    try:
        doc, expected = targets(ports, args.healthy, args.interval, args.timeout)
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "hostile.yaml"
            config.write_text(json.dumps({"targets": doc, "concurrency": len(doc) + 8,
                                          "history": {"results": args.history}}))
            print(f"{len(doc)} targets ({2 * args.healthy} healthy), {args.minutes:g} min, "
                  f"started {time.strftime('%H:%M:%S')}")
            print(HEADER)
            samples, final = run_loop(run(args, config, expected), daemon=True)
    finally:
        stop_servers(proc)
    return report(samples, final, expected)


if __name__ == "__main__":
    raise SystemExit(main())

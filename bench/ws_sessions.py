"""Benchmark 5: authenticated WebSocket sessions — the daemon vs a bare `websockets` client loop.

One session = TCP connect + HTTP upgrade carrying `Authorization: Bearer <JWT HS256>` (checked by
the server) + one {"type":"ping"} -> {"type":"pong"} exchange + close. The server is
bench/_servers.py `ws` (websockets, JWT verified with PyJWT, pinned to CPU 1). Both clients reuse
a minted token while it is valid (the daemon's JWT cache; the bare loop mints once).

- Cost: N targets at 1 s (N sessions/s), CPU seconds per 1000 sessions of each client process.
- Capacity on one core (client under `taskset -c 0`): step up the sessions per second; a step
  passes when start lag p99 < 50 ms and >= 97% of the scheduled sessions succeeded. Lag is
  measured the same way for both clients, from outside: the server logs each upgrade's arrival
  per path (see scale.py / _common.external_lag). The daemon's own probe_scheduler_lag_seconds
  is shown too; its window includes the effect of the scrape that opens it.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH,
    PY,
    Procs,
    arrivals,
    buckets,
    cpu_seconds,
    daemon,
    emit,
    external_lag,
    fmt,
    free_port,
    machine,
    pct,
    port_open,
    run_load,
    runq_wait,
    scrape,
    share_at_most,
    table,
    total,
    wait_until,
    write_config,
    write_urls,
)

PREFIXES = ("probe_scheduler_lag_seconds", "probe_results_total")
CREDENTIALS = """credentials:
  bench-user:
    jwt: {secret: "${BENCH_JWT_SECRET}", algorithm: HS256, ttl: 10m,
          claims: {sub: bench, aud: staging}}
"""


def ws_target(i: int, url: str) -> str:
    return (f"  - name: ws{i}\n    url: '{url}'\n    interval: 1s\n    timeout: 1s\n"
            "    credential: bench-user\n    messages:\n"
            "      - {send: {type: ping}, expect: {json: {type: pong}}, timeout: 1s}\n")


def run_daemon(procs: Procs, urls: list[str], env: dict[str, str], warmup: float,
               window: float, cpu: str | None, log: Path) -> dict:
    cfg = write_config(procs, f"ws-{len(urls)}", (ws_target(i, u) for i, u in enumerate(urls)),
                       concurrency=str(max(256, len(urls))))
    cfg.write_text(CREDENTIALS + cfg.read_text())
    pid, port = daemon(procs, cfg, cpu=cpu, env=env)
    try:
        time.sleep(warmup)
        s0, t0 = scrape(port, PREFIXES), time.monotonic()
        time.sleep(2)  # the window opens after the delay the scrape caused has passed
        c0, q0, e0 = cpu_seconds(pid), runq_wait(pid), time.time()
        time.sleep(window)
        c1, q1, e1 = cpu_seconds(pid), runq_wait(pid), time.time()
        s1, t1 = scrape(port, PREFIXES), time.monotonic()
    finally:
        procs.stop(procs.started[-1])
    made = total(s1, PREFIXES[1]) - total(s0, PREFIXES[1])
    ok = (total(s1, PREFIXES[1], result="success") - total(s0, PREFIXES[1], result="success"))
    share = window / (t1 - t0)
    b0, b1 = buckets(s0, PREFIXES[0]), buckets(s1, PREFIXES[0])
    time.sleep(1.5)  # the server writes its log once a second
    lag = external_lag(arrivals(log, e0, e1), 1.0)
    return {"sessions": made * share, "ok": ok * share, "cpu": c1 - c0, "wait": q1 - q0,
            "within_50ms": share_at_most(0.05, b0, b1), "lag_p99": pct(lag, 99),
            "window": window}


def run_bare(procs: Procs, urls: list[str], env: dict[str, str], warmup: float,
             window: float, cpu: str | None, log: Path) -> dict:
    r = run_load(procs, "wsfloor", write_urls(procs, f"ws-{len(urls)}", urls),
                 ["--timeout", "1"], window, warmup, cpu=cpu, env=env)
    time.sleep(1.5)
    e0, e1 = r["epoch_window"]
    lag = external_lag(arrivals(log, e0, e1), 1.0)
    return {"sessions": r["probes"], "ok": r["probes"] - r["errors"], "cpu": r["cpu"],
            "lag_p99": pct(lag, 99), "own_lag_p99": r["lag_p99"], "window": window}


def passes(r: dict, n: int) -> bool:
    return r["lag_p99"] < 0.05 and r["ok"] / (n * r["window"]) >= 0.97


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=100, help="sessions/s for the cost comparison")
    p.add_argument("--steps", default="200,400,800,1200", help="sessions/s for capacity")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    print(f"machine: {machine()}")
    env = {"BENCH_JWT_SECRET": secrets.token_hex(32)}
    out: dict[str, object] = {}
    with Procs() as procs:
        port = free_port()
        log = procs.tmp / "ws-arrivals.log"
        procs.start([PY, str(BENCH / "_servers.py"), "ws", "--port", str(port), "--log",
                     str(log)], "ws-server", cpu="1", env=env)
        wait_until(lambda: port_open(port), 10, "the WebSocket server")

        def urls(n: int) -> list[str]:
            return [f"ws://127.0.0.1:{port}/ws/{i}" for i in range(n)]

        cost = {"daemon": run_daemon(procs, urls(a.rate), env, a.warmup, a.window, None, log),
                "bare": run_bare(procs, urls(a.rate), env, a.warmup, a.window, None, log)}
        out["cost"] = cost
        capacity: dict[str, list[dict]] = {"daemon": [], "bare": []}
        for name, fn in (("daemon", run_daemon), ("bare", run_bare)):
            for n in (int(x) for x in a.steps.split(",")):
                r = fn(procs, urls(n), env, a.warmup, a.window, "0", log)
                r["rate"], r["pass"] = n, passes(r, n)
                capacity[name].append(r)
                print(f"  {name} {n}/s on one core: {'pass' if r['pass'] else 'FAIL'} "
                      f"({r['ok'] / a.window:.0f} ok/s, CPU {r['cpu'] / a.window:.0%})", flush=True)
                if not r["pass"]:
                    break
        out["capacity"] = capacity
    per = {k: 1000 * v["cpu"] / v["sessions"] if v["sessions"] else float("nan")
           for k, v in cost.items()}
    rows = [[name, f"{cost[key]['sessions']:.0f}", f"{cost[key]['sessions'] - cost[key]['ok']:.0f}",
             fmt(per[key], 3), fmt(per[key] / per["bare"])]
            for key, name in (("daemon", "stageprobe daemon"), ("bare", "bare websockets loop"))]
    print(table(f"5a. CPU per 1000 JWT sessions + ping/pong ({a.rate} sessions/s)", rows,
                ["client", "sessions", "failed", "CPU s/1000", "x bare loop"]))
    best = {k: max((r["rate"] for r in v if r["pass"]), default=0) for k, v in capacity.items()}
    rows = []
    for key in ("daemon", "bare"):
        for r in capacity[key]:
            own = (f"{fmt(r['within_50ms'] * 100, 2)}% <= 50 ms" if "within_50ms" in r
                   else f"p99 {fmt(r['own_lag_p99'] * 1000, 1)} ms")
            rows.append([key, r["rate"], f"{r['ok'] / r['window']:.0f}",
                         fmt(r["lag_p99"] * 1000, 1), own, f"{r['cpu'] / r['window']:.0%}",
                         "yes" if r["pass"] else "NO"])
    print(table("5b. Sessions per second sustained on one core", rows,
                ["client", "scheduled/s", "ok/s", "lag p99 ms (server-side)",
                 "lag (client's own)", "CPU", "pass"]))
    ratio = best["daemon"] / best["bare"] if best["bare"] else float("nan")
    print(f"sustained on one core: daemon {best['daemon']}/s, bare loop {best['bare']}/s "
          f"(ratio {fmt(ratio)}; step granularity: {a.steps})")
    out["per_1000"], out["best"] = per, best
    emit({"machine": machine(), **out}, a.json)


if __name__ == "__main__":
    main()

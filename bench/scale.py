"""Benchmark 3: the most targets at a 1 s interval the daemon sustains on ONE core, and its RSS.

The daemon runs under `taskset -c 0`; the target (Debian nginx, one worker) under `taskset -c 1`.
For each step N (stopping after the first step that fails) the daemon gets N http targets at a
1 s interval, warms up, and is then measured in two phases:

- A, unscraped (`--quiet` s): nobody scrapes /metrics. Lag is measured from OUTSIDE, from the
  arrival times nginx logs per target (`$msec`, 1 ms resolution): for each target, arrival k
  should come k intervals after its schedule's origin, which is estimated as its least-late
  arrival; lag = how much later than that each arrival came. (It cannot see a lag that every
  probe of a target shares; the scheduler's start jitter makes such a constant lag unlikely.)
- B, scraped (`--scraped` s): /metrics is scraped at the start, every `--scrape-every` s and at
  the end, as Prometheus would. Lag p99 comes from the daemon's own probe_scheduler_lag_seconds
  histogram (its increase over phase B; the share of probes started within 50 ms is exact since
  0.05 is a bucket edge), and from nginx's log as in A. Scraping is part of the daemon's work:
  a scrape that holds the event loop delays every probe due meanwhile.

A step passes when lag p99 < 50 ms and at least 97% of the scheduled probes were made (from
probe_results_total in B; from the log in A). RSS is read from /proc at the end of a step;
"RSS/1000" is RSS per 1000 targets, "marginal" the growth over a 10-target daemon.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Procs,
    arrivals,
    buckets,
    cpu_seconds,
    daemon,
    emit,
    external_lag,
    fmt,
    http_target,
    machine,
    nginx,
    pct,
    rss_bytes,
    runq_wait,
    scrape,
    share_at_most,
    table,
    total,
    write_config,
)

LAG_GOAL = 0.050
DONE_GOAL = 0.97
PREFIXES = ("probe_scheduler_lag_seconds", "probe_results_total")


def step(procs: Procs, port: int, log: Path, n: int, a: argparse.Namespace) -> dict:
    cfg = write_config(procs, f"scale-{n}", (
        http_target(f"t{i}", f"http://127.0.0.1:{port}/s{n}/t{i}") for i in range(n)
    ), concurrency=str(max(256, n)))
    pid, dport = daemon(procs, cfg, cpu="0", ready_timeout=120)
    proc = procs.started[-1]
    try:
        time.sleep(a.warmup)
        # Phase A: nobody scrapes.
        a0, ca0, qa0 = time.time(), cpu_seconds(pid), runq_wait(pid)
        time.sleep(a.quiet)
        a1, ca1, qa1 = time.time(), cpu_seconds(pid), runq_wait(pid)
        # Phase B: scraped like Prometheus would.
        s0 = scrape(dport, PREFIXES)
        b0, cb0, qb0 = time.time(), cpu_seconds(pid), runq_wait(pid)
        deadline = b0 + a.scraped
        nxt = b0 + a.scrape_every
        while nxt < deadline - 1:
            time.sleep(max(0.0, nxt - time.time()))
            scrape(dport, PREFIXES)
            nxt += a.scrape_every
        time.sleep(max(0.0, deadline - time.time()))
        b1, cb1, qb1 = time.time(), cpu_seconds(pid), runq_wait(pid)
        s1 = scrape(dport, PREFIXES)
        rss = rss_bytes(pid)
    finally:
        procs.stop(proc)
    time.sleep(1.5)  # nginx flushes its log buffer every second
    arr_a = arrivals(log, a0 + 1, a1)
    arr_b = arrivals(log, b0 + 1, b1)
    lag_a, lag_b = external_lag(arr_a, 1.0), external_lag(arr_b, 1.0)
    hb0, hb1 = buckets(s0, PREFIXES[0]), buckets(s1, PREFIXES[0])
    within = share_at_most(LAG_GOAL, hb0, hb1)
    done_b = (total(s1, PREFIXES[1]) - total(s0, PREFIXES[1])) / (n * (b1 - b0))
    done_a = sum(len(v) for v in arr_a.values()) / (n * (a1 - a0 - 1))
    res = {
        "targets": n, "rss": rss,
        "a_lag_p50": pct(lag_a, 50), "a_lag_p99": pct(lag_a, 99), "a_done": done_a,
        "a_cpu": (ca1 - ca0) / (a1 - a0), "a_wait": (qa1 - qa0) / (a1 - a0),
        "b_lag_p99_ext": pct(lag_b, 99), "b_within_50ms": within, "b_done": done_b,
        "b_cpu": (cb1 - cb0) / (b1 - b0), "b_wait": (qb1 - qb0) / (b1 - b0),
    }
    res["a_ok"] = res["a_lag_p99"] < LAG_GOAL and done_a >= DONE_GOAL
    res["b_ok"] = within >= 0.99 and done_b >= DONE_GOAL
    return res


def base_rss(procs: Procs, port: int) -> int:
    cfg = write_config(procs, "scale-base", (
        http_target(f"t{i}", f"http://127.0.0.1:{port}/base/t{i}") for i in range(10)
    ))
    pid, _ = daemon(procs, cfg, cpu="0")
    time.sleep(3)
    rss = rss_bytes(pid)
    procs.stop(procs.started[-1])
    return rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="500,1000,1500,2000,3000")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--quiet", type=float, default=12.0, help="phase A length (s)")
    p.add_argument("--scraped", type=float, default=30.0, help="phase B length (s)")
    p.add_argument("--scrape-every", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    print(f"machine: {machine()}; daemon on CPU 0, nginx on CPU 1")
    results = []
    with Procs() as procs:
        log = procs.tmp / "arrivals.log"
        port = nginx(procs, cpu="1", access_log=log)
        base = base_rss(procs, port)
        for n in (int(x) for x in a.steps.split(",")):
            r = step(procs, port, log, n, a)
            results.append(r)
            print(f"  {n} targets: A lag p99 {fmt(r['a_lag_p99'] * 1000, 1)} ms, "
                  f"B within 50ms {fmt(r['b_within_50ms'] * 100, 2)}%, "
                  f"CPU {fmt(r['a_cpu'] * 100, 0)}%/{fmt(r['b_cpu'] * 100, 0)}%, waiting for "
                  f"the CPU {fmt(r['a_wait'] * 100, 0)}%/{fmt(r['b_wait'] * 100, 0)}%", flush=True)
            if not (r["a_ok"] or r["b_ok"]):
                break
    rows = []
    for r in results:
        n = r["targets"]
        rows.append([
            n, f"{fmt(r['a_lag_p50'] * 1000, 1)} / {fmt(r['a_lag_p99'] * 1000, 1)}",
            fmt(r["a_done"] * 100, 1), fmt(r["a_cpu"] * 100, 0), "yes" if r["a_ok"] else "NO",
            fmt(r["b_within_50ms"] * 100, 2), fmt(r["b_lag_p99_ext"] * 1000, 1),
            fmt(r["b_done"] * 100, 1), fmt(r["b_cpu"] * 100, 0), "yes" if r["b_ok"] else "NO",
            f"{r['rss'] / 2**20:.0f}", f"{r['rss'] / n * 1000 / 2**20:.1f}",
            f"{(r['rss'] - base) / n * 1000 / 2**20:.1f}",
        ])
    print(table(
        f"3. Scale on one core, 1 s interval (A: unscraped; B: scraped every {a.scrape_every:g} s)",
        rows,
        ["targets", "A lag p50/p99 ms", "A done %", "A CPU %", "A ok", "B <=50ms %",
         "B lag p99 ms (ext)", "B done %", "B CPU %", "B ok", "RSS MiB", "RSS/1000 MiB",
         "marginal/1000 MiB"],
    ))
    best_a = max((r["targets"] for r in results if r["a_ok"]), default=0)
    best_b = max((r["targets"] for r in results if r["b_ok"]), default=0)
    print(f"sustained (lag p99 < 50 ms, >= {DONE_GOAL:.0%} of probes made): "
          f"{best_a} targets unscraped, {best_b} scraped every {a.scrape_every:g} s "
          f"(goal: 2000; ratio {best_b / 2000:.2f}x of goal); base RSS {base / 2**20:.0f} MiB")
    emit({"machine": machine(), "base_rss": base, "steps": results,
          "sustained_unscraped": best_a, "sustained_scraped": best_b}, a.json)


if __name__ == "__main__":
    main()

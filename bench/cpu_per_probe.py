"""Benchmarks 1 and 2: CPU seconds per 1000 HTTP probes — the daemon, blackbox_exporter, and the
bare aiohttp floor — at the same probe rate, in one run.

Setup: one loopback HTTP target server (Debian nginx, one worker pinned to CPU 1; an aiohttp
server in its own process when nginx is missing) serving K paths; every prober probes each of
the K URLs once a second, spread evenly, with a fresh TCP connection per probe.

- daemon: `probe run` with K http targets (interval 1s). CPU = utime+stime from /proc over the
  window, plus the CPU of one /metrics scrape (measured right after) for every 15 s of window,
  as a Prometheus scraping every 15 s would cost it; probes = increase of probe_results_total.
- blackbox_exporter: module http_2xx, driven by a separate process issuing
  GET /probe?module=http_2xx&target=URL at the same rate. Only the exporter's CPU is counted: the
  driver stands in for Prometheus, which pays for its scrapes of the daemon too.
- floor: a bare aiohttp loop in its own process, a new TCPConnector(force_close=True) and
  ClientSession per probe, as the issue defines it; with --all-floors also one session whose
  connector never reuses a connection (still a fresh TCP connection per probe).
- reference: a GET over a bare asyncio Protocol (no HTTP library): what the kernel's TCP work
  and the event loop cost per fresh-connection probe; the bound a leaner client could approach.

The probers run one after another (not at once), each for warmup + window seconds, so none of
them competes with another for the CPU; `--rounds` interleaved rounds, medians reported (this
shared 2-core VM moves single figures by +-30%). Per-probe cost depends on the rate (at low
rates every probe wakes an idle process), so each K given is a separate row set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Procs,
    blackbox,
    cpu_seconds,
    daemon,
    daemon_available,
    emit,
    fmt,
    http_target,
    machine,
    nginx,
    other_load,
    run_load,
    scrape,
    table,
    target_server_name,
    total,
    uses_uvloop,
    write_config,
    write_urls,
)

SCRAPE_INTERVAL = 15.0  # seconds; the daemon's CPU includes one /metrics scrape this often


def measure_daemon(procs: Procs, urls: list[str], warmup: float, window: float,
                   ca_file: Path | None = None) -> dict:
    extra = f", ca_file: '{ca_file}'" if ca_file else ""
    cfg = write_config(procs, f"cpu-{len(urls)}",
                       (http_target(f"t{i}", u, extra=extra) for i, u in enumerate(urls)))
    pid, port = daemon(procs, cfg)
    time.sleep(warmup)
    prefixes = ("probe_results_total", "probe_failures_total")
    s0, t0 = scrape(port, prefixes), time.monotonic()
    time.sleep(2)  # let the probes the scrape held up catch up before the window opens
    c0, w0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, w1 = cpu_seconds(pid), time.monotonic()
    s1, t1 = scrape(port, prefixes), time.monotonic()
    scrape_cpu = cpu_seconds(pid) - c1  # what one scrape costs (the loop does little else)
    uv = uses_uvloop(pid)
    procs.stop(procs.started[-1])
    # The counters' rate over [t0, t1] times the CPU window's length: probes in the window.
    share = (w1 - w0) / (t1 - t0)
    probes = (total(s1, "probe_results_total") - total(s0, "probe_results_total")) * share
    ok = (total(s1, "probe_results_total", result="success")
          - total(s0, "probe_results_total", result="success")) * share
    before = {(lab["target"], lab["failure"]): v for n, lab, v in s0
              if n == "probe_failures_total"}
    failures: dict[str, float] = {}
    for n, lab, v in s1:
        if n == "probe_failures_total" and v > before.get((lab["target"], lab["failure"]), 0):
            d = v - before.get((lab["target"], lab["failure"]), 0)
            failures[lab["failure"]] = failures.get(lab["failure"], 0) + d
    scrapes = scrape_cpu * (w1 - w0) / SCRAPE_INTERVAL
    return {"probes": probes, "errors": probes - ok, "cpu": c1 - c0 + scrapes, "uvloop": uv,
            "failures": failures, "scrape_cpu": scrape_cpu,
            "scrape_share": scrapes / (c1 - c0 + scrapes) if c1 > c0 else float("nan")}


NAMES = {"daemon": "stageprobe daemon", "blackbox": "blackbox_exporter (exporter only)",
         "floor": "floor: bare aiohttp, new session per probe",
         "floor_shared": "floor: bare aiohttp, one session, force_close",
         "floor_raw": "reference: bare asyncio protocol, no HTTP library"}


def measure(procs: Procs, key: str, urls: list[str], url_file: Path, warmup: float,
            window: float, ca_file: Path | None = None) -> dict:
    """One prober's CPU per 1000 probes of `urls` (https:// ones trusting `ca_file`)."""
    if key == "daemon":
        r = measure_daemon(procs, urls, warmup, window, ca_file)
    elif key == "blackbox":
        bb_port = blackbox(procs, ca_file=ca_file)
        bb = procs.started[-1]
        r = run_load(procs, "blackbox", url_file,
                     ["--bb-port", str(bb_port), "--bb-pid", str(bb.pid)], window, warmup)
        procs.stop(bb)
    else:
        flag = {"floor": [], "floor_shared": ["--shared"], "floor_raw": ["--raw"]}[key]
        flag += ["--ca-file", str(ca_file)] if ca_file else []
        r = run_load(procs, "floor", url_file, flag, window, warmup)
    r.pop("recorded", None)
    r["cpu_per_1000"] = 1000 * r["cpu"] / r["probes"] if r["probes"] else float("nan")
    return r


def run(targets: int, warmup: float, window: float, rounds: int, keys: list[str]) -> dict:
    """`rounds` interleaved rounds (daemon, blackbox, floors, daemon, blackbox, ...): a
    disturbance from outside hits one round of each, and the median shrugs it off."""
    per: dict[str, list[dict]] = {k: [] for k in keys}
    with Procs() as procs:
        port = nginx(procs)
        urls = [f"http://127.0.0.1:{port}/t/{i}" for i in range(targets)]
        url_file = write_urls(procs, "targets", urls)
        for _ in range(rounds):
            for key in keys:
                per[key].append(measure(procs, key, urls, url_file, warmup, window))
    out: dict[str, object] = {"targets": targets, "window": window, "rounds": rounds}
    for key, runs in per.items():
        costs = [r["cpu_per_1000"] for r in runs]
        out[key] = {**runs[-1], "cpu_per_1000": statistics.median(costs), "each": costs,
                    "probes": sum(r["probes"] for r in runs),
                    "errors": sum(r["errors"] for r in runs)}
    if "daemon" in per:
        out["daemon_vs_blackbox_each"] = [d["cpu_per_1000"] / b["cpu_per_1000"] for d, b in
                                          zip(per["daemon"], per["blackbox"], strict=True)]
    return out


def rows(res: dict) -> list[list[str]]:
    bb = res["blackbox"]["cpu_per_1000"]
    fl = res["floor"]["cpu_per_1000"]
    out = []
    for key, name in NAMES.items():
        r = res.get(key)
        if not isinstance(r, dict):
            continue
        c = r["cpu_per_1000"]
        each = "/".join(fmt(x, 2) for x in r["each"])
        out.append([str(res["targets"]), name, f"{r['probes']:.0f}", f"{r['errors']:.0f}",
                    fmt(c, 3), each, fmt(c / bb), fmt(c / fl)])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="200,1000",
                   help="comma-separated K values (probes per second), default 200,1000")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    p.add_argument("--all-floors", action="store_true",
                   help="also the one-session aiohttp floor")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    print(f"machine: {machine()}; target server: {target_server_name()}; "
          f"load average {other_load():.2f}")
    keys = ["daemon"] if daemon_available() else []
    keys += ["blackbox", "floor", *(["floor_shared"] if a.all_floors else []), "floor_raw"]
    results = [run(int(k), a.warmup, a.window, a.rounds, keys) for k in a.targets.split(",")]
    all_rows = [r for res in results for r in rows(res)]
    print(table("1+2. CPU per 1000 HTTP probes (fresh connection each, K probes/s)", all_rows,
                ["K/s", "prober", "probes", "errors", "CPU s/1000 (median)", "each round",
                 "x blackbox", "x floor(new session)"]))
    for res in results:
        d = res.get("daemon")
        if isinstance(d, dict):
            each = "/".join(fmt(x) for x in res["daemon_vs_blackbox_each"])
            print(f"K={res['targets']}: one scrape costs the daemon {d['scrape_cpu']:.2f} s CPU "
                  f"({d['scrape_share']:.0%} of its CPU at one scrape per {SCRAPE_INTERVAL:g} s)")
            print(f"K={res['targets']}: daemon/blackbox = "
                  f"{fmt(d['cpu_per_1000'] / res['blackbox']['cpu_per_1000'])} "
                  f"(per round {each}; goal <= 0.6), "
                  f"daemon/floor = {fmt(d['cpu_per_1000'] / res['floor']['cpu_per_1000'])} "
                  f"(goal <= 1.3); uvloop mapped in the daemon: {d['uvloop']}"
                  + (f"; daemon failures: {d['failures']}" if d["failures"] else ""))
    emit({"machine": machine(), "results": results}, a.json)


if __name__ == "__main__":
    main()

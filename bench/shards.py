"""Sharded replicas (issue 15): targets per shard at 1 s on one core, and the fleet's probes/s.

A shard is a whole `probe run` that probes only its rendezvous share of the config, so what
one shard carries on one core is what one daemon carries (bench/scale.py measures that limit
in detail). This script asks the two questions sharding is for, on this machine:

1. one shard pinned to CPU 0: the config holds COUNT x `--per-shard` targets at a 1 s interval
   and PROBE_SHARD=0/COUNT probes its share (~`--per-shard`): probes made per scheduled one,
   the share started within 50 ms (its own probe_scheduler_lag_seconds), its CPU.
2. the fleet: COUNT shards of the same config, not pinned (the machine's cores, shared with
   the target server), against ONE unsharded daemon given every target: probes per second
   made by each, and their ratio. One Python daemon is one event loop on one core; COUNT shards
   use as many cores as the machine has.

Each phase warms up `--warmup` s and measures `--window` s by scraping /metrics at both ends
(probe_results_total, probe_scheduler_lag_seconds). The target is Debian nginx (one worker),
pinned to the last CPU. Bounded: every process is ended by pid when a phase ends; the whole run
takes about 3 x (warmup + window) + start-up, ~1.5 min by default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Procs,
    buckets,
    cpu_seconds,
    daemon,
    emit,
    fmt,
    http_target,
    machine,
    nginx,
    other_load,
    scrape,
    share_at_most,
    table,
    total,
    write_config,
)

PREFIXES = ("probe_scheduler_lag_seconds", "probe_results_total")
LAG_GOAL = 0.050


def measure(procs: Procs, pids_ports: list[tuple[int, int]], a: argparse.Namespace) -> dict:
    """Probes/s, share of probes started within 50 ms and CPU of each daemon over the window."""
    time.sleep(a.warmup)
    s0 = [scrape(port, PREFIXES) for _, port in pids_ports]
    c0 = [cpu_seconds(pid) for pid, _ in pids_ports]
    t0 = time.time()
    time.sleep(a.window)
    s1 = [scrape(port, PREFIXES) for _, port in pids_ports]
    c1 = [cpu_seconds(pid) for pid, _ in pids_ports]
    t1 = time.time()
    per = []
    for i in range(len(pids_ports)):
        done = total(s1[i], PREFIXES[1]) - total(s0[i], PREFIXES[1])
        per.append({
            "targets": len({lab["target"] for n, lab, _ in s1[i] if n == PREFIXES[1]}),
            "probes_per_s": done / (t1 - t0),
            "within_50ms": share_at_most(LAG_GOAL, buckets(s0[i], PREFIXES[0]),
                                         buckets(s1[i], PREFIXES[0])),
            "cpu": (c1[i] - c0[i]) / (t1 - t0),
        })
    return {"daemons": per, "probes_per_s": sum(d["probes_per_s"] for d in per)}


def run_phase(procs: Procs, cfg: Path, envs: list[dict[str, str]], cpu: str | None,
              a: argparse.Namespace) -> dict:
    started = [daemon(procs, cfg, cpu=cpu, name=f"d{i}", env=env, ready_timeout=120)
               for i, env in enumerate(envs)]
    mine = procs.started[-len(envs):]
    try:
        return measure(procs, started, a)
    finally:
        for p in mine:
            procs.stop(p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-shard", type=int, default=1000, help="targets each shard probes")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    cpus = os.cpu_count() or 1
    n = a.per_shard * a.shards
    print(f"machine: {machine()}; load average before: {other_load():.2f}")
    with Procs() as procs:
        port = nginx(procs, cpu=str(cpus - 1))
        cfg = write_config(procs, "shards", (
            http_target(f"t{i}", f"http://127.0.0.1:{port}/t{i}") for i in range(n)
        ), concurrency=str(max(256, n)))
        one = run_phase(procs, cfg, [{"PROBE_SHARD": f"0/{a.shards}"}], "0", a)
        fleet = run_phase(procs, cfg, [{"PROBE_SHARD": f"{i}/{a.shards}"}
                                       for i in range(a.shards)], None, a)
        single = run_phase(procs, cfg, [{}], None, a)
    load = other_load()
    d = one["daemons"][0]
    rows = [["1 shard, CPU 0", d["targets"], fmt(d["probes_per_s"], 0),
             fmt(d["probes_per_s"] / max(d["targets"], 1), 3), fmt(d["within_50ms"] * 100, 2),
             fmt(d["cpu"] * 100, 0)]]
    for i, d in enumerate(fleet["daemons"]):
        rows.append([f"fleet shard {i}/{a.shards}", d["targets"], fmt(d["probes_per_s"], 0),
                     fmt(d["probes_per_s"] / max(d["targets"], 1), 3),
                     fmt(d["within_50ms"] * 100, 2), fmt(d["cpu"] * 100, 0)])
    d = single["daemons"][0]
    rows.append(["1 unsharded daemon", d["targets"], fmt(d["probes_per_s"], 0),
                 fmt(d["probes_per_s"] / max(d["targets"], 1), 3),
                 fmt(d["within_50ms"] * 100, 2), fmt(d["cpu"] * 100, 0)])
    print(table(f"Shards at 1 s ({n} targets in the config, {a.window:g} s window)", rows,
                ["who", "targets", "probes/s", "made/scheduled", "started <=50ms %", "CPU %"]))
    ratio = fleet["probes_per_s"] / max(single["probes_per_s"], 1e-9)
    print(f"fleet of {a.shards} shards: {fleet['probes_per_s']:.0f} probes/s "
          f"({fleet['probes_per_s'] / n:.3f} of the {n} scheduled), one unsharded daemon "
          f"{single['probes_per_s']:.0f} probes/s: ratio {ratio:.2f}x; "
          f"load average after: {load:.2f}")
    emit({"machine": machine(), "per_shard": a.per_shard, "shards": a.shards, "one": one,
          "fleet": fleet, "single": single, "ratio": ratio}, a.json)


if __name__ == "__main__":
    main()

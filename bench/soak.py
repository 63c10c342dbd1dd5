"""Soak: the real daemon probing N mixed targets (healthy and faulty) for a long time.

    python bench/soak.py --targets 200 --duration 10m

What runs where, and why:
- The fault servers (tests/faults: healthy HTTP/WebSocket plus one server per fault) run in a
  child process, so every number measured here is the prober's alone.
- The prober is the real `probe.daemon.run.Daemon` (scheduler, checks, metrics, readiness, history
  and its aiohttp server) run in this process on uvloop, exactly as `probe run` runs it. In-process
  rather than `probe run` as a subprocess because the asyncio task count can only be read from
  inside; RSS (VmRSS of /proc/self/status) and open fds (/proc/self/fd) are read the same way
  `ps` would. Sampling costs one /metrics scrape over loopback per sample.
- Scheduler lag p99 comes from the daemon's own `probe_scheduler_lag_seconds` histogram on
  /metrics (per sample window, to the bucket bound). Misclassifications come from
  `probe_failures_total{target,failure}` and `probe_results_total`: a faulty target counted
  under any class but its fault's (tests/faults HTTP_EXPECTED / WS_EXPECTED), or succeeding; a
  healthy target failing at all.
- Every `--reload-every` (default 60 s) the config file is rewritten, alternating between two
  versions that differ by a tenth of the targets, and `Daemon.reload()` (what SIGHUP calls) is
  run: removed loops, series and states must not pile up.
- The status page's history is bounded by config (default 1000 results or 1 h per target); the
  soak keeps `--history 10` results so that it is full by the end of the warm-up: growth after
  that is a leak, not a buffer filling up (pass --history 1000 to soak the default).

Verdict (exit 1 on any): after a warm-up (the first 10% of the run), the mean of the first third
of samples is compared with the mean of the last third — RSS, fds and tasks must not grow past
their thresholds, lag p99 must not blow up; no misclassification; no target probed at less than
half its cadence (a dead or starved loop). Every request goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import aiohttp  # noqa: E402
from _soak_metrics import Scrape, lag_p99, misclassified, parse, probes_total  # noqa: E402
from faults import HTTP_EXPECTED, WS_EXPECTED  # noqa: E402

from probe.config import Config, load_config, parse_duration  # noqa: E402
from probe.daemon.run import Daemon, run_loop  # noqa: E402
from probe.logging import configure  # noqa: E402

# Faults that make sense over and over (every one ends within the probe timeout).
HTTP_FAULTS = ["no_answer", "accept_no_read", "stall_body", "drip", "big_body", "big_body:length",
               "garbage", "bad_chunk", "reset", "reset:chunked,fin", "redirect_loop", "refuse",
               "status:500"]
WS_FAULTS = ["ws_silent", "ws_no_upgrade", "ws_garbage", "ws_big", "ws_close:1000",
             "ws_close:1001", "ws_close:1008", "ws_close:1011", "ws_close:4000", "ws_drop",
             "ws_reject:403", "ws_reject:500"]
PING = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}}


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    tasks: int
    lag_p99_ms: float | None
    probes: int  # in this sample's window
    misclassified: int  # cumulative
    scrape_ms: float  # one GET /metrics, as this process (the daemon's own loop) served it


@dataclass
class Plan:
    """Two configs the run alternates between on reload: B renames every tenth target of A
    (so each reload removes some targets and adds as many), the rest stay (`stable`)."""

    docs: tuple[dict[str, Any], dict[str, Any]]
    expected: dict[str, str | None]  # target (of A or B) -> failure class its fault produces
    fault_of: dict[str, str]
    stable: set[str]

    @property
    def config(self) -> Config:
        return Config.model_validate(self.docs[0])


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- the servers (child process) -------------------------------------------------------------


def start_servers(faults: list[str]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "faults", *faults], cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit(f"fault servers did not start (exit {proc.wait()})")
    return proc, json.loads(line)


def stop_servers(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()  # the child serves until its stdin closes
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the targets -----------------------------------------------------------------------------


def plan_targets(n: int, faulty: float, interval: float, timeout: float,
                 ports: dict[str, int], history: int = 1000) -> Plan:
    """Alternate HTTP and WebSocket; `faulty` of them cycle through the faults of their kind."""
    targets: list[dict[str, Any]] = []
    renamed: list[dict[str, Any]] = []
    expected: dict[str, str | None] = {}
    fault_of: dict[str, str] = {}
    stable: set[str] = set()
    n_faulty = round(n * faulty)
    counts: dict[str, int] = defaultdict(int)
    for i in range(n):
        ws = i % 2 == 1
        if i < n_faulty:
            pool = WS_FAULTS if ws else HTTP_FAULTS
            fault = pool[(i // 2) % len(pool)]
            table = WS_EXPECTED if ws else HTTP_EXPECTED
            exp = table[fault]
        else:
            fault, exp = ("ws_ok" if ws else "ok"), None
        counts[fault] += 1
        name = f"{fault.replace(':', '-').replace(',', '-')}-{counts[fault]}"
        scheme = "ws" if ws else "http"
        t: dict[str, Any] = {"name": name, "url": f"{scheme}://127.0.0.1:{ports[fault]}/p{i}"}
        if ws:
            t["messages"] = [PING]
        elif fault == "ok":
            t["expect"] = {"json": {"status": "healthy"}}
        targets.append(t)
        expected[name], fault_of[name] = exp, fault
        if i % 10 == 9:
            other = {**t, "name": f"{name}-b"}
            expected[other["name"]], fault_of[other["name"]] = exp, fault
            renamed.append(other)
        else:
            stable.add(name)
            renamed.append(t)
    top = {"defaults": {"interval": interval, "timeout": timeout},
           "concurrency": max(256, n), "history": {"results": history}}
    return Plan(({**top, "targets": targets}, {**top, "targets": renamed}), expected, fault_of,
                stable)


# --- the run ---------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, plan: Plan, workdir: Path
               ) -> tuple[list[Sample], Scrape, dict[str, dict[str, float]], float]:
    """Run the daemon, sample it, reload it now and then; samples, last scrape, worst
    misclassifications seen (kept across reloads, which drop a removed target's series)."""
    path = workdir / "soak.yaml"
    path.write_text(json.dumps(plan.docs[0]))  # JSON is YAML
    daemon = Daemon(load_config(path), config_path=path)
    url = await daemon.start("127.0.0.1", 0)
    samples: list[Sample] = []
    worst: dict[str, dict[str, float]] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    reloads = 0
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape() -> tuple[Scrape, float]:
                t0 = loop.time()
                async with http.get(f"{url}/metrics") as resp:
                    text = await resp.text()
                return parse(text), (loop.time() - t0) * 1000.0

            prev, _ = await scrape()
            k = 0
            while True:
                k += 1
                await asyncio.sleep(max(0.0, start + k * args.sample_every - loop.time()))
                cur, scrape_ms = await scrape()
                for name, bad in misclassified(plan.expected, cur).items():
                    seen = worst.setdefault(name, {})
                    for cls, n in bad.items():
                        seen[cls] = max(seen.get(cls, 0.0), n)
                lag = lag_p99(prev.lag_buckets, cur.lag_buckets)
                samples.append(Sample(
                    t=loop.time() - start, rss_mb=rss_mb(), fds=open_fds(),
                    tasks=len(asyncio.all_tasks()),
                    lag_p99_ms=None if lag is None else lag * 1000.0,
                    probes=max(0, probes_total(cur) - probes_total(prev)),
                    misclassified=int(sum(sum(v.values()) for v in worst.values())),
                    scrape_ms=scrape_ms,
                ))
                print(row(samples[-1]), flush=True)
                prev = cur
                if loop.time() - start >= args.duration:
                    break
                if args.reload_every and loop.time() - start >= (reloads + 1) * args.reload_every:
                    reloads += 1  # what SIGHUP does: re-read the file, apply the difference
                    path.write_text(json.dumps(plan.docs[reloads % 2]))
                    if not await daemon.reload():
                        raise SystemExit("reload of a valid config failed")
    finally:
        await daemon.stop()
    print(f"reloads: {reloads}")
    return samples, prev, worst, loop.time() - start


# --- the verdict -----------------------------------------------------------------------------

HEADER = (f"{'t':>7} {'rss MB':>8} {'fds':>6} {'tasks':>6} {'lag p99':>9} {'probes':>7} "
          f"{'miscl':>6} {'scrape':>8}")


def row(s: Sample) -> str:
    lag = "-" if s.lag_p99_ms is None else f"{s.lag_p99_ms:.0f}ms"
    return (f"{s.t:6.0f}s {s.rss_mb:8.1f} {s.fds:6d} {s.tasks:6d} {lag:>9} {s.probes:7d} "
            f"{s.misclassified:6d} {s.scrape_ms:6.0f}ms")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def verdict(args: argparse.Namespace, plan: Plan, samples: list[Sample], final: Scrape,
            wrong: dict[str, dict[str, float]], elapsed: float
            ) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    steady = [s for s in samples if s.t >= 0.1 * args.duration] or samples
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    summary: dict[str, Any] = {"targets": len(plan.docs[0]["targets"]),
                               "elapsed_s": round(elapsed)}
    for field, floor, rel in (("rss_mb", args.max_rss_growth_mb, 0.15),
                              ("fds", args.max_fd_growth, 0.10),
                              ("tasks", args.max_task_growth, 0.10)):
        a = mean([float(getattr(s, field)) for s in first])
        b = mean([float(getattr(s, field)) for s in last])
        limit = max(floor, rel * a)
        summary[field] = {"start": getattr(samples[0], field), "end": getattr(samples[-1], field),
                          "first_third_mean": round(a, 1), "last_third_mean": round(b, 1),
                          "growth": round(b - a, 1), "limit": round(limit, 1)}
        if b - a > limit:
            problems.append(f"{field} grew from {a:.1f} to {b:.1f} (limit +{limit:.1f})")
    # the median of the windows' p99 per third: one slow window (a scrape landing on a burst of
    # probe starts) is noise; a p99 that is high in most windows of the last third is a trend
    lag_a = statistics.median((s.lag_p99_ms or 0.0) for s in first)
    lag_b = statistics.median((s.lag_p99_ms or 0.0) for s in last)
    summary["lag_p99_ms"] = {"first_third_median": lag_a, "last_third_median": lag_b,
                             "overall_max": max((s.lag_p99_ms or 0.0) for s in samples)}
    if lag_b > max(args.max_lag_ms, 2 * lag_a):
        problems.append(f"scheduler lag p99 rose from {lag_a:.0f}ms to {lag_b:.0f}ms")
    summary["misclassified"] = {n: {**v, "fault": plan.fault_of[n]} for n, v in wrong.items()}
    if wrong:
        problems.append(f"{len(wrong)} target(s) misclassified: " + ", ".join(
            f"{n} ({plan.fault_of[n]}: {v})" for n, v in sorted(wrong.items())[:5]))
    floor_count = (elapsed / args.interval) * 0.5  # every target has the default interval
    starved = {name: int(final.results.get((name, "success"), 0)
                         + final.results.get((name, "failure"), 0))
               for name in plan.stable}
    starved = {n: c for n, c in starved.items() if c < floor_count}
    summary["starved"] = starved
    summary["probes"] = probes_total(final)
    if starved:
        problems.append(f"{len(starved)} target(s) probed under half their cadence "
                        f"(< {floor_count:.0f}): {sorted(starved)[:5]}")
    return problems, summary


def by_fault(plan: Plan, final: Scrape) -> str:
    seen: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, fault in plan.fault_of.items():
        seen[fault]["success"] += final.results.get((name, "success"), 0)
        for (target, failure), count in final.failures.items():
            if target == name and count:
                seen[fault][failure] += count
    lines = [f"{'fault':<20} {'expected':<16} seen"]
    table = {**HTTP_EXPECTED, **WS_EXPECTED}
    for fault in sorted(seen):
        exp = table.get(fault)
        got = ", ".join(f"{k} {v:.0f}" for k, v in sorted(seen[fault].items()) if v)
        lines.append(f"{fault:<20} {exp or 'success':<16} {got}")
    return "\n".join(lines)


def _off_or_duration(text: str) -> float:
    return 0.0 if text.strip() in ("0", "off") else parse_duration(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=200)
    p.add_argument("--duration", type=parse_duration, default=600.0, help="e.g. 10m, 90s")
    p.add_argument("--faulty", type=float, default=0.3, help="fraction of faulty targets")
    p.add_argument("--interval", type=parse_duration, default=5.0)
    p.add_argument("--timeout", type=parse_duration, default=2.0)
    p.add_argument("--sample-every", type=parse_duration, default=None,
                   help="default: duration/30, between 2s and 30s")
    p.add_argument("--max-rss-growth-mb", type=float, default=16.0)
    p.add_argument("--max-fd-growth", type=float, default=20.0)
    p.add_argument("--max-task-growth", type=float, default=20.0)
    p.add_argument("--max-lag-ms", type=float, default=250.0)
    p.add_argument("--history", type=int, default=10,
                   help="results kept per target for the status page (the daemon's default is "
                        "1000): small, so that the buffers are full by the end of the warm-up and "
                        "any later growth is a leak, not history filling up")
    p.add_argument("--reload-every", type=_off_or_duration, default=60.0,
                   help="re-read a changed config this often, as SIGHUP does (0: never)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args(argv)
    if args.sample_every is None:
        args.sample_every = min(30.0, max(2.0, args.duration / 30))
    if args.targets < 2 or not 0 <= args.faulty <= 1:
        p.error("--targets must be >= 2 and --faulty between 0 and 1")
    configure(level="error")  # transitions of 200 targets would drown the table
    faults = sorted({"ok", "ws_ok", *HTTP_FAULTS, *WS_FAULTS})
    proc, ports = start_servers(faults)
    try:
        plan = plan_targets(args.targets, args.faulty, args.interval, args.timeout, ports,
                            args.history)
        targets = plan.config.targets
        kinds = defaultdict(int)
        for t in targets:
            kinds[t.kind] += 1
        n_faulty = sum(1 for t in targets if plan.expected[t.name] is not None)
        print(f"soak: {len(targets)} targets ({dict(kinds)}; {n_faulty} faulty), "
              f"interval {args.interval:g}s, timeout {args.timeout:g}s, for {args.duration:g}s; "
              f"fault servers in pid {proc.pid}", flush=True)
        print(HEADER, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            samples, final, worst, elapsed = run_loop(  # type: ignore[call-overload]
                soak(args, plan, Path(tmp)), daemon=True)
    finally:
        stop_servers(proc)
    problems, summary = verdict(args, plan, samples, final, worst, elapsed)
    print()
    print(by_fault(plan, final))
    print()
    for key in ("rss_mb", "fds", "tasks"):
        v = summary[key]
        print(f"{key:>7}: start {v['start']}, end {v['end']}; mean first third "
              f"{v['first_third_mean']}, last third {v['last_third_mean']} "
              f"(growth {v['growth']:+}, limit +{v['limit']})")
    lag = summary["lag_p99_ms"]
    print(f"lag p99: median of windows {lag['first_third_median']}ms in the first third, "
          f"{lag['last_third_median']}ms in the last; worst window {lag['overall_max']}ms")
    print(f" scrape: GET /metrics took {min(x.scrape_ms for x in samples):.0f}-"
          f"{max(x.scrape_ms for x in samples):.0f}ms (the daemon's loop is busy meanwhile)")
    print(f" probes: {summary['probes']} in {elapsed:.0f}s")
    if args.json is not None:
        summary["samples"] = [asdict(s) for s in samples]
        summary["problems"] = problems
        args.json.write_text(json.dumps(summary, indent=2))
    if problems:
        print("\nFAIL:\n  " + "\n  ".join(problems))
        return 1
    print("\nOK: nothing grew without bound, every fault classified as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

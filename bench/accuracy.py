"""Benchmark 4: how truthfully latency is measured under load — the daemon vs blackbox_exporter.

A loopback server answers after exactly 50 ms (bench/_servers.py `slow`: a thread per
connection sleeping with clock_nanosleep; it records how long it really held each request, so
its own overshoot is shown too). S slow targets are probed once a second each while the prober
also carries `--load` other targets at 1 s (nginx, fresh connection per probe), and for
reference with no other load. Error = measured latency - 50 ms, over every probe of a slow target
in the window. Under load, `--rounds` interleaved rounds of each prober, samples pooled (a p99
over ~600 samples is the 6th worst: one hiccup of the machine moves it).

- daemon: `probe run` with the slow + load targets; each probe's total latency is read back from
  /api/v1/status history (one point per probe), after the window, for probes started in it.
  Unscraped during the window, and once more (under load) scraped every `--scrape-every` s as
  Prometheus would: a scrape holds the event loop, and a probe in flight then measures it too.
- blackbox_exporter: the driver (bench/_load.py blackbox) issues /probe for the same URLs at the
  same rates and keeps probe_duration_seconds from each slow target's answer.

Servers are pinned to CPU 1; the probers are not pinned (blackbox_exporter is multi-threaded).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH,
    PY,
    Procs,
    blackbox,
    daemon,
    emit,
    fmt,
    free_port,
    http_get,
    http_target,
    machine,
    nginx,
    pct,
    port_open,
    run_load,
    scrape,
    table,
    wait_until,
    write_config,
    write_urls,
)

DELAY = 0.050


def slow_server(procs: Procs) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    p = procs.start([PY, str(BENCH / "_servers.py"), "slow", "--port", str(port),
                     "--delay", str(DELAY)], "slow", cpu="1", stdout=subprocess.PIPE)
    wait_until(lambda: port_open(port), 10, "the slow server")
    return p, port


def held(procs: Procs, p: subprocess.Popen[bytes]) -> list[float]:
    """Stop the slow server and return how long it held each request."""
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=15)
    procs.stop(p)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])["held"] if lines else []


def run_daemon(procs: Procs, slow: list[str], load: list[str], a: argparse.Namespace,
               scrape_every: float = 0.0) -> tuple[list[float], list[float]]:
    sp, sport = slow_server(procs)
    slow = [u.replace("SLOWPORT", str(sport)) for u in slow]
    items = [http_target(f"slow{i}", u) for i, u in enumerate(slow)]
    items += [http_target(f"load{i}", u) for i, u in enumerate(load)]
    cfg = write_config(procs, f"acc-{len(load)}", items)
    _, port = daemon(procs, cfg)
    time.sleep(a.warmup)
    t0 = time.time()
    t1 = t0 + a.window
    if scrape_every > 0:  # as Prometheus would; the first scrape lands 1/3 into the window
        nxt = t0 + scrape_every / 3
        while nxt < t1:
            time.sleep(max(0.0, nxt - time.time()))
            scrape(port, ("probe_success",))
            nxt += scrape_every
    time.sleep(max(0.0, t1 - time.time()))
    status, body = http_get(port, "/api/v1/status?points=1000", timeout=120)
    procs.stop(procs.started[-1])
    if status != 200:
        raise RuntimeError(f"/api/v1/status answered {status}")
    measured = []
    for t in json.loads(body)["targets"]:
        if not t["name"].startswith("slow"):
            continue
        for at, n, fails, latency_ms, _failure in t["history"]["points"]:
            if n != 1:
                raise RuntimeError("history was downsampled; lower --window")
            if t0 <= at < t1 and not fails and latency_ms is not None:
                measured.append(latency_ms / 1000)
    return measured, held(procs, sp)


def run_blackbox(procs: Procs, slow: list[str], load: list[str], a: argparse.Namespace
                 ) -> tuple[list[float], list[float]]:
    sp, sport = slow_server(procs)
    slow = [u.replace("SLOWPORT", str(sport)) for u in slow]
    bb_port = blackbox(procs)
    bb = procs.started[-1]
    urls = write_urls(procs, f"acc-{len(load)}", slow + load)
    rec = [x for u in slow for x in ("--record", u)]
    r = run_load(procs, "blackbox", urls,
                 ["--bb-port", str(bb_port), "--bb-pid", str(bb.pid), *rec], a.window, a.warmup)
    procs.stop(bb)
    return r["recorded"], held(procs, sp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=20, help="slow (50 ms) targets, 1 probe/s each")
    p.add_argument("--load", type=int, default=1000, help="other targets carried meanwhile")
    p.add_argument("--warmup", type=float, default=6.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--no-idle", action="store_true", help="skip the no-load reference rows")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds under load (samples pooled)")
    p.add_argument("--scrape-every", type=float, default=15.0,
                   help="also run the loaded daemon scraped this often (0: don't)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    print(f"machine: {machine()}")
    slow = [f"http://127.0.0.1:SLOWPORT/slow/{i}" for i in range(a.slow)]
    results: dict[str, dict] = {}
    with Procs() as procs:
        nport = nginx(procs, cpu="1")
        loads = [0, a.load] if not a.no_idle else [a.load]
        for n in loads:
            load = [f"http://127.0.0.1:{nport}/load/{i}" for i in range(n)]
            runs = [("daemon", run_daemon), ("blackbox", run_blackbox)] * (a.rounds if n else 1)
            if n and a.scrape_every > 0:
                runs.append(("daemon-scraped", lambda *x: run_daemon(*x, a.scrape_every)))
            pooled: dict[str, tuple[list[float], list[float], list[float]]] = {}
            for name, fn in runs:  # interleaved rounds; samples pooled per prober
                measured, server = fn(procs, slow, load, a)
                err, srv, p99s = pooled.setdefault(name, ([], [], []))
                err += [m - DELAY for m in measured]
                srv += [h - DELAY for h in server]
                p99s.append(pct([m - DELAY for m in measured], 99))
                print(f"  {name} with {n} other targets: {len(measured)} samples", flush=True)
            for name, (err, srv, p99s) in pooled.items():
                results[f"{name}@{n}"] = {
                    "samples": len(err), "err_p50": pct(err, 50), "err_p99": pct(err, 99),
                    "server_p50": pct(srv, 50), "server_p99": pct(srv, 99), "p99_each": p99s,
                }
    rows = []
    for n in loads:
        bb = results[f"blackbox@{n}"]
        for name in ("daemon", "blackbox", "daemon-scraped"):
            r = results.get(f"{name}@{n}")
            if r is None:
                continue
            rows.append([
                n, name, r["samples"], fmt(r["err_p50"] * 1000, 2), fmt(r["err_p99"] * 1000, 2),
                "/".join(fmt(x * 1000, 1) for x in r["p99_each"]),
                fmt(r["err_p99"] / bb["err_p99"]),
                f"{fmt(r['server_p50'] * 1000, 2)} / {fmt(r['server_p99'] * 1000, 2)}",
            ])
    print(table(f"4. Latency error on a 50 ms target ({a.slow} slow targets at 1 s)", rows,
                ["other targets", "prober", "samples", "error p50 ms", "error p99 ms",
                 "p99 per round", "p99 x blackbox", "server's own overshoot p50/p99 ms"]))
    d, b = results[f"daemon@{a.load}"], results[f"blackbox@{a.load}"]
    print(f"under load: daemon error p99 {fmt(d['err_p99'] * 1000)} ms vs blackbox_exporter "
          f"{fmt(b['err_p99'] * 1000)} ms (ratio {fmt(d['err_p99'] / b['err_p99'])}, goal <= 1)")
    ds = results.get(f"daemon-scraped@{a.load}")
    if ds:
        print(f"under load, scraped every {a.scrape_every:g} s: daemon error p99 "
              f"{fmt(ds['err_p99'] * 1000)} ms (ratio {fmt(ds['err_p99'] / b['err_p99'])})")
    emit({"machine": machine(), "results": results, "scrape_every": a.scrape_every}, a.json)


if __name__ == "__main__":
    main()

"""Where the daemon's CPU goes: py-spy samples of `probe run` probing N loopback HTTP targets.

    pip install py-spy          # a profiling tool only; not a dependency of the project
    python bench/profile_daemon.py [--targets 1000] [--seconds 15] [--scrape-every 0]

Prints the frames with the largest inclusive and self shares of the samples (idle excluded),
with paths shortened. `--scrape-every S` also scrapes /metrics every S seconds, to see the
exposition's share. `Runner.run` as a self frame is the event loop's own C code (uvloop):
socket syscalls, epoll, timers and whatever allocations trigger there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Procs,
    cpu_seconds,
    daemon,
    http_target,
    machine,
    nginx,
    scrape,
    write_config,
)


def short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--scrape-every", type=float, default=0.0)
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    print(f"machine: {machine()}")
    with Procs() as procs:
        port = nginx(procs)
        cfg = write_config(procs, "profile", (
            http_target(f"t{i}", f"http://127.0.0.1:{port}/t{i}") for i in range(a.targets)
        ), concurrency=str(max(256, a.targets)))
        pid, dport = daemon(procs, cfg)
        time.sleep(5)
        raw = procs.tmp / "profile.txt"
        c0 = cpu_seconds(pid)
        sampler = procs.start([spy, "record", "-p", str(pid), "-d", str(a.seconds), "-r", "250",
                               "-f", "raw", "-o", str(raw), "--nonblocking"], "py-spy")
        deadline = time.monotonic() + a.seconds + 30
        next_scrape = time.monotonic() + a.scrape_every
        while sampler.poll() is None and time.monotonic() < deadline:
            if a.scrape_every and time.monotonic() >= next_scrape:
                scrape(dport, ("probe_results_total",))
                next_scrape += a.scrape_every
            time.sleep(0.1)
        procs.stop(sampler)
        cpu = cpu_seconds(pid) - c0
        text = raw.read_text() if raw.exists() else ""
    if not text:
        raise SystemExit("py-spy recorded nothing (is ptrace allowed here?)")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    n = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [short(f) for f in stack.split(";")]
        k = int(count)
        n += k
        for f in set(frames):
            inclusive[f] += k
        own[frames[-1]] += k
    print(f"{a.targets} targets at 1 s: {cpu / a.seconds:.0%} of a CPU "
          f"({1000 * cpu / (a.seconds * a.targets):.3f} ms per probe, py-spy running); "
          f"{n} samples")
    skip = ("_run_module_as_main", "_run_code", "<module>", "main (cli", "main (daemon",
            "run_loop", "Runner.run (runners")
    print("\ninclusive:")
    for f, k in inclusive.most_common(a.top + len(skip)):
        if not f.startswith(skip):
            print(f"  {100 * k / n:5.1f}%  {f}")
    print("\nself:")
    for f, k in own.most_common(a.top // 2):
        print(f"  {100 * k / n:5.1f}%  {f}")


if __name__ == "__main__":
    main()

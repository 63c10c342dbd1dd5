"""What the per-probe `traceparent` costs (probe/checks/_trace.py): the ids, the splice into the
prebuilt request bytes, and a whole HTTP probe's CPU with and without it.

    python bench/trace_cost.py [--probes 2000]

The whole-probe comparison probes an aiohttp server in another process (bench/_servers.py) from
this one, sequentially, and reads this process's CPU time: once with the per-probe header, once
with the same header configured on the target (the prebuilt bytes, nothing generated per probe),
so both send the same number of bytes and only the per-probe work differs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, port_open, wait_until

from probe.checks import CheckContext
from probe.checks._http_expect import plan_for
from probe.checks._trace import new_trace_id, traceparent
from probe.checks.http import check
from probe.config import Target

FIXED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def micro(n: int = 200_000) -> tuple[float, float, float]:
    """(id + header value, splice, os.urandom alternative) in microseconds."""
    ids = timeit.timeit(lambda: traceparent(new_trace_id()), number=n) / n
    hop = plan_for(Target.model_validate({"name": "m", "url": "http://127.0.0.1:1/x"})).hop
    splice = timeit.timeit(lambda: hop.request(None, None, FIXED), number=n) / n
    urandom = timeit.timeit(
        lambda: f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01", number=n) / n
    return ids * 1e6, splice * 1e6, urandom * 1e6


async def probe_cpu(url: str, probes: int, headers: dict[str, str]) -> float:
    """CPU seconds of this process per probe of `url`."""
    t = Target.model_validate({"name": "b", "url": url, "timeout": 5, "headers": headers})
    ctx = CheckContext()
    for _ in range(50):  # warm up: plan, TLS context, code paths
        await check(t, ctx)
    c0 = time.process_time()
    for _ in range(probes):
        outcome = await check(t, ctx)
        assert outcome.success, outcome
    return (time.process_time() - c0) / probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=2000)
    args = ap.parse_args()
    ids, splice, urandom = micro()
    print(f"ids + value: {ids:.2f} us (os.urandom: {urandom:.2f} us); splice: {splice:.2f} us")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_servers.py"),
                               "http", "--port", str(port)])
    try:
        wait_until(lambda: port_open(port), 20, "the http server")
        url = f"http://127.0.0.1:{port}/"
        rounds = []
        for _ in range(3):  # interleaved: other load on the machine hits both alike
            traced = asyncio.run(probe_cpu(url, args.probes, {}))
            fixed = asyncio.run(probe_cpu(url, args.probes, {"traceparent": FIXED}))
            rounds.append((traced, fixed))
        traced, fixed = (min(r[i] for r in rounds) for i in (0, 1))
        print(f"CPU per probe: {traced * 1e6:.0f} us with a per-probe traceparent,"
              f" {fixed * 1e6:.0f} us with a configured one"
              f" (difference {(traced - fixed) * 1e6:+.0f} us,"
              f" {(traced / fixed - 1) * 100:+.1f}%; ids + splice alone:"
              f" {(ids + splice) / (fixed * 1e6) * 100:.2f}% of a probe)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()

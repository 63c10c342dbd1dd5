"""Baseline probers and the blackbox_exporter driver, each run in its own process.

    python bench/_load.py floor    --urls FILE ...   bare aiohttp, a fresh connection per probe
    python bench/_load.py blackbox --urls FILE --bb-port P --bb-pid PID ...   drives /probe
    python bench/_load.py wsfloor  --urls FILE ...   bare websockets: JWT handshake + ping/pong

Every mode probes each URL once per `--interval`, target i starting at i*interval/len(urls)
(the same even spread the daemon's scheduler aims for), for `--warmup` + `--window` seconds and
never more than that many slots. The window's figures are printed as one JSON line: probes,
errors, CPU seconds of the measured process over the window (this process, or blackbox_exporter
for `blackbox`: the driver is Prometheus' stand-in and its own cost is not counted),
start lag percentiles and, for `--record` URLs, each probe's measured duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, pct

Probe = Callable[[int], Awaitable[float | None]]  # slot index -> recorded duration or None


async def drive(urls: list[str], probe: Probe, args: argparse.Namespace, pid: int) -> dict:
    n = len(urls)
    gap = args.interval / n
    wall = time.time() - time.monotonic()
    t_start = time.monotonic() + 0.2
    t_win = t_start + args.warmup
    t_end = t_win + args.window
    max_slots = int((args.warmup + args.window) / gap) + 1
    state = {"probes": 0, "errors": 0}
    lags: list[float] = []
    recorded: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    sem = asyncio.Semaphore(args.concurrency)
    cpu0: list[float] = []

    async def mark_window() -> None:
        await asyncio.sleep(max(0.0, t_win - time.monotonic()))
        cpu0.append(cpu_seconds(pid))

    marker = asyncio.create_task(mark_window())

    async def one(slot: int, due: float) -> None:
        async with sem:
            started = time.monotonic()
            in_window = t_win <= due < t_end
            if in_window:
                lags.append(started - due)
            try:
                rec = await asyncio.wait_for(probe(slot), args.timeout)
                ok = True
            except Exception as exc:
                ok, rec = False, None
                if state["errors"] < 3:
                    print(f"probe error: {exc!r}", file=sys.stderr)
            if in_window:
                state["probes"] += 1
                state["errors"] += 0 if ok else 1
                if rec is not None:
                    recorded.append(rec)

    slot = 0
    while slot < max_slots:
        due = t_start + slot * gap
        if due >= t_end:
            break
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while slot < max_slots and t_start + slot * gap <= min(now, t_end - 1e-9):
            t = asyncio.create_task(one(slot, t_start + slot * gap))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            slot += 1
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    cpu1 = cpu_seconds(pid)
    await marker
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    return {
        "probes": state["probes"], "errors": state["errors"], "window": args.window,
        "cpu": cpu1 - cpu0[0], "self_cpu_total": cpu_seconds(os.getpid()),
        "lag_p50": pct(lags, 50), "lag_p99": pct(lags, 99), "recorded": recorded,
        "epoch_window": [t_win + wall, t_end + wall],
    }


async def floor(urls: list[str], args: argparse.Namespace) -> dict:
    """A new connector and session per probe (as a naive prober would), or with --shared one
    session whose connector never keeps a connection (a fresh TCP connection per probe all
    the same, without rebuilding the session: the cheaper, stricter floor)."""
    import aiohttp

    async def fresh(slot: int) -> None:
        conn = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.get(urls[slot % len(urls)], allow_redirects=False) as r,
        ):
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")

    if args.raw:
        return await drive(urls, _raw_get(urls, args.ca_file), args, os.getpid())
    if not args.shared:
        return await drive(urls, fresh, args, os.getpid())

    conn = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def shared(slot: int) -> None:
            async with session.get(urls[slot % len(urls)], allow_redirects=False) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")

        return await drive(urls, shared, args, os.getpid())


def _raw_get(urls: list[str], ca_file: str | None = None) -> Probe:
    """GET over a bare asyncio Protocol: connect, write, read to EOF, check the status line.

    No HTTP library at all: a lower bound for what one fresh-connection probe costs in
    Python on this event loop (the kernel's TCP work plus a few loop callbacks). https://
    URLs go through the loop's own TLS (create_connection(ssl=), one SSLContext trusting
    `ca_file`, the chain and host verified): the same bound with a full handshake."""
    import ssl
    from urllib.parse import urlsplit

    parts = [urlsplit(u) for u in urls]
    tls = ssl.create_default_context(cafile=ca_file)
    requests = [f"GET {p.path or '/'} HTTP/1.1\r\nHost: {p.netloc}\r\nConnection: close\r\n"
                "\r\n".encode() for p in parts]

    class Get(asyncio.Protocol):
        def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
            self.request, self.done, self.buf = request, done, bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(self.request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.buf += data

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(bytes(self.buf))

    async def probe(slot: int) -> None:
        i = slot % len(urls)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        secure = parts[i].scheme == "https"
        transport, _ = await loop.create_connection(
            lambda: Get(requests[i], done), parts[i].hostname, parts[i].port,
            ssl=tls if secure else None, server_hostname=parts[i].hostname if secure else None)
        try:
            answer = await done
        finally:
            transport.close()
        if not answer.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer {answer[:40]!r}")

    return probe


async def blackbox(urls: list[str], args: argparse.Namespace) -> dict:
    import aiohttp

    record = set(args.record or ())
    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        base = f"http://127.0.0.1:{args.bb_port}/probe?module=http_2xx&target="
        paths = [base + quote(u, safe="") for u in urls]

        async def probe(slot: int) -> float | None:
            i = slot % len(urls)
            async with s.get(paths[i]) as r:
                text = await r.text()
            if "\nprobe_success 1" not in text:
                raise RuntimeError(f"blackbox probe of {urls[i]} failed")
            if urls[i] in record:
                for line in text.splitlines():
                    if line.startswith("probe_duration_seconds "):
                        return float(line.split()[1])
            return None

        return await drive(urls, probe, args, args.bb_pid)


async def wsfloor(urls: list[str], args: argparse.Namespace) -> dict:
    import jwt
    from websockets.asyncio.client import connect

    # Minted once and reused, as the daemon's JWT cache does for a token's lifetime.
    token = jwt.encode({"sub": "bench", "aud": "staging", "exp": int(time.time()) + 3600},
                       os.environ["BENCH_JWT_SECRET"], algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}

    async def probe(slot: int) -> None:
        async with connect(urls[slot % len(urls)], additional_headers=headers, proxy=None,
                           compression=None, ping_interval=None, open_timeout=args.timeout) as ws:
            await ws.send('{"type":"ping"}')
            reply = json.loads(await ws.recv())
            if reply.get("type") != "pong":
                raise RuntimeError(f"unexpected reply {reply!r}")

    return await drive(urls, probe, args, os.getpid())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["floor", "blackbox", "wsfloor"])
    p.add_argument("--urls", type=Path, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--bb-port", type=int)
    p.add_argument("--bb-pid", type=int)
    p.add_argument("--record", action="append", help="URL whose probe durations to keep")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--shared", action="store_true", help="floor: one session, fresh connections")
    p.add_argument("--raw", action="store_true", help="floor: bare asyncio protocol, no library")
    p.add_argument("--ca-file", default=None, help="raw floor: the CA https:// URLs are trusted by")
    a = p.parse_args()
    if not a.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    urls = [u for u in a.urls.read_text().split() if u]
    mode = {"floor": floor, "blackbox": blackbox, "wsfloor": wsfloor}[a.mode]
    result = asyncio.run(mode(urls, a))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

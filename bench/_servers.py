"""Loopback target servers for the benchmarks, each run in its own process.

    python bench/_servers.py http --port P           200 "ok" (aiohttp; nginx is preferred)
    python bench/_servers.py slow --port P [--delay]  answers after exactly `delay` seconds
    python bench/_servers.py ws --port P --secret-env VAR [--log F]  JWT WebSocket ping -> pong

The slow server uses a thread per connection and time.sleep (clock_nanosleep), not an event
loop timer: a loop timer can fire a millisecond late, which is the very error being measured.
It records how long it really held each request and reports them on SIGTERM (to stdout, JSON),
so the benchmark can show the server's own share of any error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time


def run_http(port: int) -> None:
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    _uvloop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def run_slow(port: int, delay: float) -> None:
    held: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    body = b"ok\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n%s" % (len(body), body))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                t0 = time.perf_counter()
                rest = delay - (time.perf_counter() - t0)
                while rest > 0:
                    time.sleep(rest)
                    rest = delay - (time.perf_counter() - t0)
                conn.sendall(answer)
                t1 = time.perf_counter()
                with lock:
                    if len(held) < 1_000_000:
                        held.append(t1 - t0)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                return

    lsock = socket.create_server(("127.0.0.1", port), backlog=1024)
    lsock.settimeout(0.2)

    def report(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, report)
    while not stop.is_set():
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        except OSError:
            break
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    with lock:
        sys.stdout.write(json.dumps({"held": held}) + "\n")
    sys.stdout.flush()


def run_ws(port: int, secret: str, log: str | None) -> None:
    import jwt
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    seen: list[str] = []

    def check_token(conn: ServerConnection, request: Request) -> Response | None:
        if log is not None:
            seen.append(f"{time.time():.4f} {request.path}\n")
        auth = request.headers.get("Authorization", "")
        try:
            jwt.decode(auth.removeprefix("Bearer "), secret, algorithms=["HS256"],
                       options={"verify_aud": False})
        except jwt.PyJWTError:
            return conn.respond(401, "bad token\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        async for msg in ws:
            try:
                kind = json.loads(msg).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "ping":
                await ws.send('{"type":"pong"}')

    def flush() -> None:
        if log is not None and seen:
            with open(log, "a") as f:
                f.writelines(seen)
            seen.clear()

    async def flusher() -> None:
        while True:  # like nginx's buffered access log: written once a second
            await asyncio.sleep(1.0)
            flush()

    async def main() -> None:
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        task = asyncio.create_task(flusher())
        async with serve(handler, "127.0.0.1", port, process_request=check_token,
                         compression=None, ping_interval=None, backlog=4096):
            await stop
        task.cancel()
        flush()

    _uvloop()
    asyncio.run(main())


def _uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["http", "slow", "ws"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.05)
    p.add_argument("--secret-env", default="BENCH_JWT_SECRET")
    p.add_argument("--log", default=None, help="ws: append `epoch path` per upgrade here")
    a = p.parse_args()
    if a.kind == "http":
        run_http(a.port)
    elif a.kind == "slow":
        run_slow(a.port, a.delay)
    else:
        run_ws(a.port, os.environ[a.secret_env], a.log)


if __name__ == "__main__":
    main()

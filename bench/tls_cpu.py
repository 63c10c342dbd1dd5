"""CPU per HTTPS probe side by side with blackbox_exporter, with and without session tickets;
plain HTTP beside it.

    python bench/tls_cpu.py [--targets 200] [--rounds 2] [--window 10] [--modes plain,tls,tickets]
    python bench/tls_cpu.py --inprocess 2000 [--tickets] [--no-resume] [--plain] [--profile]
    python bench/tls_cpu.py --session-copy 2000

Setup (issue 17's "Performance over TLS"): a private CA (root -> intermediate -> leaf for
127.0.0.1, made at start-up by tests/faults/certs.make_chain, as a staging PKI would be) and
three Debian nginx servers: `tls` serves the leaf and the intermediate with no session cache and
no session tickets it would accept (every probe of every prober a full handshake), `tickets` the
same with session tickets on, as most servers and load balancers run (the daemon resumes
sessions, tls_resume's default; blackbox_exporter and the reference do not), and `plain` plain
HTTP. Every prober trusts the root only (`ca_file`; blackbox: `tls_config.ca_file`) and
verifies the chain and the host. For each mode, in interleaved rounds, the daemon (`probe run`,
K targets at 1 s) and blackbox_exporter (module http_2xx, driven at the same rate) are measured
exactly as bench/cpu_per_probe.py measures them (its `measure`): CPU from /proc/PID/stat over
the window, the daemon's including one /metrics scrape per 15 s.
The reference: a GET over a bare asyncio Protocol on uvloop (bench/_load.py --raw; over TLS
the loop's own create_connection(ssl=)), what the kernel, the loop and OpenSSL's full handshake
cost with no HTTP client at all.
Printed: each prober's CPU per 1000 probes (median of the rounds, and each round), and the
daemon/blackbox ratio against issue 17's goals (<= 0.5 over TLS, <= 0.3 plain).

--inprocess N: N probes of one target through probe.checks.http.check in this process
(uvloop, 20 at a time), CPU per probe from process_time: TLS without tickets by default,
`--tickets` with them, `--no-resume` with tls_resume: false, `--plain` plain HTTP; with
--profile, cProfile's top functions by own time too. Cheap and quiet enough for A/B of one
change (another tree's code: PYTHONPATH=/other/tree).

--session-copy N: what CPython's session handling costs on this OpenSSL: N `wrap_bio(session=)`
(CPython's offer) and N reads of `SSLObject.session`, each a copy through DER, and N offers
and reads through probe.checks._tls_native (SSL_SESSION_dup, what the probes use), against
N `wrap_bio` without a session, the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # faults.certs
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Procs, emit, fmt, machine, nginx, other_load, table, write_urls
from cpu_per_probe import NAMES, measure
from faults.certs import make_chain

# daemon / blackbox_exporter, issue 17. "tls": a server without session tickets (every probe a
# full handshake); "tickets": the same server issuing tickets, as most do: the daemon resumes
# (tls_resume, probe.checks._tls_sessions), blackbox_exporter and the reference do not.
GOALS = {"plain": 0.3, "tls": 0.5, "tickets": 0.5}
KEYS = ("daemon", "blackbox", "floor_raw")


def run(targets: int, warmup: float, window: float, rounds: int, modes: list[str]) -> dict:
    """Interleaved rounds (plain daemon, plain blackbox, TLS daemon, TLS blackbox, again ...):
    a disturbance from outside hits one round of each, and the medians shrug it off."""
    per: dict[tuple[str, str], list[dict]] = {(m, k): [] for m in modes for k in KEYS}
    with Procs() as procs:
        chain = make_chain(procs.tmp / "pki", intermediate_days=30, leaf_days=60)
        pair = (chain.server.cert, chain.server.key)
        ports = {"plain": nginx(procs), "tls": nginx(procs, tls=pair),
                 "tickets": nginx(procs, tls=pair, tickets=True)}
        urls = {m: [f"{'http' if m == 'plain' else 'https'}://127.0.0.1:{ports[m]}/t/{i}"
                    for i in range(targets)] for m in modes}
        files = {m: write_urls(procs, m, urls[m]) for m in modes}
        for _ in range(rounds):
            for mode in modes:
                ca = chain.ca_file if mode != "plain" else None
                for key in KEYS:
                    per[mode, key].append(measure(procs, key, urls[mode], files[mode], warmup,
                                                  window, ca))
    out: dict[str, object] = {"targets": targets, "window": window, "rounds": rounds,
                              "modes": modes}
    for mode in modes:
        res: dict[str, object] = {}
        for key in KEYS:
            runs = per[mode, key]
            costs = [r["cpu_per_1000"] for r in runs]
            res[key] = {"cpu_per_1000": statistics.median(costs), "each": costs,
                        "probes": sum(r["probes"] for r in runs),
                        "errors": sum(r["errors"] for r in runs),
                        "failures": runs[-1].get("failures", {})}
        res["ratio_each"] = [d["cpu_per_1000"] / b["cpu_per_1000"] for d, b in
                             zip(per[mode, "daemon"], per[mode, "blackbox"], strict=True)]
        res["ratio"] = (res["daemon"]["cpu_per_1000"]  # type: ignore[index]
                        / res["blackbox"]["cpu_per_1000"])  # type: ignore[index]
        out[mode] = res
    return out


def report(res: dict) -> None:
    rows = []
    for mode in res["modes"]:
        bb = res[mode]["blackbox"]["cpu_per_1000"]
        for key in KEYS:
            r = res[mode][key]
            rows.append([mode, NAMES[key], f"{r['probes']:.0f}", f"{r['errors']:.0f}",
                         fmt(r["cpu_per_1000"], 3), "/".join(fmt(x, 3) for x in r["each"]),
                         fmt(r["cpu_per_1000"] / bb)])
    print(table(f"CPU s per 1000 probes at {res['targets']}/s (fresh connection each; TLS: full"
                " handshake, private CA chain verified)", rows,
                ["", "prober", "probes", "errors", "CPU s/1000 (median)", "each round",
                 "x blackbox"]))
    for mode in res["modes"]:
        r = res[mode]
        each = "/".join(fmt(x) for x in r["ratio_each"])
        print(f"{mode}: daemon/blackbox = {fmt(r['ratio'])} (per round {each}; goal <= "
              f"{GOALS[mode]:g}: {'met' if r['ratio'] <= GOALS[mode] else 'not met'})"
              + (f"; daemon failures: {r['daemon']['failures']}"
                 if r["daemon"]["failures"] else ""))


async def _inprocess(url: str, ca_file: Path, n: int, profile: bool, resume: bool
                     ) -> tuple[float, str]:
    from probe.checks import CheckContext
    from probe.checks.http import check
    from probe.config import parse_config

    extra = "" if resume else ", tls_resume: false"  # the default, and older trees lack it
    cfg = parse_config(f"targets:\n  - {{name: t, url: '{url}', ca_file: '{ca_file}'{extra}}}\n")
    target, ctx = cfg.targets[0], CheckContext()
    sem = asyncio.Semaphore(20)
    failed: list[str] = []

    async def one() -> None:
        async with sem:
            out = await check(target, ctx)
            if not out.success and len(failed) < 3:
                failed.append(out.detail)

    await asyncio.gather(*(one() for _ in range(50)))  # warm: contexts, plans, code paths
    prof = cProfile.Profile() if profile else None
    c0 = time.process_time()
    if prof is not None:
        prof.enable()
    await asyncio.gather(*(one() for _ in range(n)))
    if prof is not None:
        prof.disable()
    cpu = (time.process_time() - c0) / n
    if failed:
        raise SystemExit(f"probes failed: {failed}")
    text = ""
    if prof is not None:
        import io

        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        text = buf.getvalue()
    return cpu, text


def inprocess(n: int, profile: bool, tickets: bool, resume: bool, plain: bool) -> None:
    import uvloop

    with Procs() as procs:
        chain = make_chain(procs.tmp / "pki", intermediate_days=30, leaf_days=60)
        if plain:
            url, what = f"http://127.0.0.1:{nginx(procs)}/t", "plain HTTP"
        else:
            port = nginx(procs, tls=(chain.server.cert, chain.server.key), tickets=tickets)
            url = f"https://127.0.0.1:{port}/t"
            what = (f"TLS (server tickets {'on' if tickets else 'off'}, tls_resume"
                    f" {str(resume).lower()})")
        cpu, text = uvloop.run(_inprocess(url, chain.ca_file, n, profile, resume))
    print(f"in-process, {n} {what} probes: {cpu * 1000:.3f} ms CPU per probe"
          + (" (cProfile on: slower)" if profile else ""))
    if text:
        print(text)


def session_copy(n: int) -> None:
    import socket
    import ssl

    from probe.checks._tls_native import _load

    with Procs() as procs:
        chain = make_chain(procs.tmp / "pki", intermediate_days=30, leaf_days=60)
        port = nginx(procs, tls=(chain.server.cert, chain.server.key), tickets=True)
        ctx = ssl.create_default_context(cafile=str(chain.ca_file))

        def handshake(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
            tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                  server_hostname="127.0.0.1", session=session)
            tls.sendall(b"GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            tls.recv(4096)  # the answer, and TLS 1.3's ticket before it
            return tls

        first = handshake()
        session = first.session
        first.close()
        resumed = handshake(session)
        if session is None or not resumed.session_reused:
            raise SystemExit("the tickets server did not resume the session")

        def per_call(fn: Callable[[], object]) -> float:
            c0 = time.process_time()
            for _ in range(n):
                fn()
            return (time.process_time() - c0) / n * 1e6

        def bio(**kw: object) -> object:
            return ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1",
                                **kw)  # type: ignore[arg-type]

        native = _load()  # an SSLSocket's _sslobj has the layout of an SSLObject's
        held = native.read(resumed, ctx) if native is not None else None
        if native is None or held is None:
            raise SystemExit("the native path does not hold on this interpreter")

        base = per_call(bio)
        offer = per_call(lambda: bio(session=session))
        fast = per_call(lambda: native.offer(bio(), held, ctx))
        read = per_call(lambda: resumed.session)
        fast_read = per_call(lambda: native.read(resumed, ctx))
        resumed.close()
    print(f"{ssl.OPENSSL_VERSION}, {n} calls each, CPU us per call:")
    print(f"  wrap_bio, no session (baseline): {base:.1f}")
    print(f"  wrap_bio(session=) (an offer):   {offer:.1f}  ({offer / base:.0f}x the baseline)")
    print(f"  wrap_bio + a native offer:       {fast:.1f}  ({fast / base:.1f}x the baseline;"
          " probe.checks._tls_native, what the probes use)")
    print(f"  SSLObject.session (a read):      {read:.1f}  ({read / base:.0f}x the baseline)")
    print(f"  a native read:                   {fast_read:.1f}  ({fast_read / base:.1f}x the"
          " baseline)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=200, help="probes per second (K targets)")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    p.add_argument("--modes", default=",".join(GOALS),
                   help=f"which of {', '.join(GOALS)} to measure (comma-separated)")
    p.add_argument("--inprocess", type=int, default=0, metavar="N",
                   help="only N TLS probes in this process (CPU per probe; A/B of a change)")
    p.add_argument("--profile", action="store_true", help="with --inprocess: cProfile them")
    p.add_argument("--tickets", action="store_true",
                   help="with --inprocess: the server issues session tickets")
    p.add_argument("--plain", action="store_true",
                   help="with --inprocess: a plain HTTP target instead")
    p.add_argument("--no-resume", action="store_true",
                   help="with --inprocess: the target has tls_resume: false")
    p.add_argument("--session-copy", type=int, default=0, metavar="N",
                   help="only CPython's session copy cost: N offers, N reads, N plain wrap_bio")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    print(f"machine: {machine()}; load average {other_load():.2f}; tree {ROOT}")
    if a.session_copy:
        session_copy(a.session_copy)
        return
    if a.inprocess:
        inprocess(a.inprocess, a.profile, a.tickets, not a.no_resume, a.plain)
        return
    modes = [m for m in a.modes.split(",") if m]
    if not modes or set(modes) - set(GOALS):
        raise SystemExit(f"--modes: choose from {', '.join(GOALS)}")
    res = run(a.targets, a.warmup, a.window, a.rounds, modes)
    report(res)
    emit({"machine": machine(), "results": res}, a.json)


if __name__ == "__main__":
    main()

"""Shared plumbing for the benchmarks: processes, /proc readings, metrics scraping, tables.

Everything here talks to loopback only. Every process a benchmark starts is registered with a
`Procs` context and terminated (by its own pid) when the benchmark ends, whatever happened.
CPU is read from /proc/PID/stat (utime + stime, all threads) so that every prober, Go or Python,
is measured the same way.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HOST = "127.0.0.1"


# --- machine and /proc -----------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py = sys.version.split()[0]
    return f"{os.cpu_count()} CPU(s), {model}, Python {py}, {sys.platform}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runq_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc schedstat).

    Over a window, a large share means something else was using the CPU the prober wanted:
    the figures of that window are not the prober's alone.
    """
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def other_load() -> float:
    """The 1-minute load average, to warn when the machine is busy with something else."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(step)
    raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}")


def http_get(port: int, path: str, timeout: float = 30.0,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        if resp.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return resp.status, body
    finally:
        conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


# --- processes -------------------------------------------------------------------------------


@dataclass
class Procs:
    """Owns the benchmark's child processes; ends each one, by pid, on exit."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stageprobe-bench-")))
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Procs:
        # SIGTERM (e.g. run_all.py's timeout, a CI cancel) must still end the children.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.started):
            self.stop(p)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(
        self, argv: Sequence[str], name: str, cpu: str | None = None,
        env: dict[str, str] | None = None, stdout: int | None = None, cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        """Start argv (pinned to CPU list `cpu` with taskset when given), output to a log file."""
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", cpu, *argv]
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen(
            list(argv), stdout=stdout if stdout is not None else log, stderr=log,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        self.started.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p in self.started:
            self.started.remove(p)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx(procs: Procs, cpu: str | None = "1", access_log: Path | None = None,
          tls: tuple[Path, Path] | None = None, tickets: bool = False) -> int:
    """A Debian nginx on loopback answering `200 ok` to any path; returns its port.

    One worker, no access log unless asked for (`$msec $uri` lines, buffered): the target must
    be cheap so that it is never the bottleneck. With `tls` (certificate chain file, key file)
    it speaks HTTPS only, with no session cache and no session tickets, so that every probe of
    every prober pays a full handshake, as a fresh connection to a real server does at first;
    with `tickets` it issues TLS session tickets, as most servers and load balancers do, so a
    prober that resumes sessions can.
    """
    port = free_port()
    name = ("nginx-tickets" if tickets else "nginx-tls") if tls else "nginx"
    prefix = procs.tmp / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    log_line = f"{access_log} arrival buffer=256k flush=1s" if access_log else "off"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 16384; }}
worker_rlimit_nofile 32768;
http {{
  log_format arrival '$msec $uri';
  access_log {log_line};
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen {HOST}:{port}{" ssl" if tls else ""} backlog=4096;
{_nginx_tls(tls, tickets)}    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
""")
    if access_log is not None and not Path(NGINX).exists():
        raise SystemExit("this benchmark needs nginx: apt-get install nginx-light")
    if Path(NGINX).exists():
        procs.start([NGINX, "-p", str(prefix), "-c", str(conf)], name, cpu=cpu)
    elif tls:
        raise SystemExit("the TLS benchmark needs nginx: apt-get install nginx-light")
    else:  # fallback: an aiohttp server in its own process
        procs.start([PY, str(BENCH / "_servers.py"), "http", "--port", str(port)], "nginx", cpu=cpu)
    wait_until(lambda: port_open(port), 10, "the HTTP target server")
    return port


def _nginx_tls(tls: tuple[Path, Path] | None, tickets: bool) -> str:
    if tls is None:
        return ""
    cert, key = tls
    return (f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache off;\n"
            f"    ssl_session_tickets {'on' if tickets else 'off'};\n")


def target_server_name() -> str:
    return "nginx (Debian)" if Path(NGINX).exists() else "aiohttp server"


def blackbox(procs: Procs, cpu: str | None = None, ca_file: Path | None = None) -> int:
    """blackbox_exporter with an http_2xx module (IPv4 first: the targets are 127.0.0.1),
    trusting `ca_file` for https:// targets when given."""
    if not Path(BLACKBOX).exists():
        raise SystemExit(f"{BLACKBOX} not found: apt-get install prometheus-blackbox-exporter")
    port = free_port()
    conf = procs.tmp / "blackbox.yml"
    trust = f"      tls_config:\n        ca_file: {ca_file}\n" if ca_file else ""
    conf.write_text(
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n"
        "    http:\n      preferred_ip_protocol: ip4\n" + trust
    )
    procs.start(
        [BLACKBOX, f"--config.file={conf}", f"--web.listen-address={HOST}:{port}",
         "--log.level=warn"], "blackbox", cpu=cpu,
    )
    wait_until(lambda: http_get(port, "/-/healthy")[0] == 200, 15, "blackbox_exporter")
    return port


# --- the daemon ------------------------------------------------------------------------------


def write_config(procs: Procs, name: str, targets: Iterable[str], **extra: str) -> Path:
    """A YAML config; `targets` are already-rendered YAML list items (one or more lines each)."""
    path = procs.tmp / f"{name}.yaml"
    head = "".join(f"{k}: {v}\n" for k, v in extra.items())
    path.write_text(head + "targets:\n" + "".join(targets))
    return path


def http_target(name: str, url: str, interval: str = "1s", timeout: str = "1s",
                extra: str = "") -> str:
    return f"  - {{name: {name}, url: '{url}', interval: {interval}, timeout: {timeout}{extra}}}\n"


def daemon(procs: Procs, config: Path, cpu: str | None = None, name: str = "daemon",
           env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> tuple[int, int]:
    """`probe run -c config` on a free loopback port; returns (pid, port) once /livez answers.

    BENCH_PROBE_ROOT=/other/checkout runs that tree's `probe` instead (A/B comparisons).
    """
    port = free_port()
    root = Path(os.environ.get("BENCH_PROBE_ROOT", ROOT))
    p = procs.start(
        [PY, "-m", "probe", "run", "-c", str(config)], name, cpu=cpu, cwd=root,
        env={"PROBE_LISTEN": f"{HOST}:{port}", "PROBE_LOG_LEVEL": "warning",
             "PROBE_LOG_FORMAT": "json", "PYTHONPATH": str(root), **(env or {})},
    )

    def up() -> bool:
        if p.poll() is not None:
            raise SystemExit(f"the daemon exited ({p.returncode}):\n{procs.log(name)[-3000:]}")
        return http_get(port, "/livez", timeout=5)[0] == 200

    wait_until(up, ready_timeout, "the daemon's /livez")
    return p.pid, port


# --- Prometheus text -------------------------------------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


Sample = tuple[str, dict[str, str], float]


def parse_metrics(text: str, prefixes: tuple[str, ...] = ("",)) -> list[Sample]:
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(prefixes):
            continue
        m = _LINE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


# What Prometheus 2.x sends when it scrapes: OpenMetrics preferred, gzip accepted.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


def scrape(port: int, prefixes: tuple[str, ...] = ("",)) -> list[Sample]:
    """GET /metrics as Prometheus would, parsed (only samples whose name starts with a prefix)."""
    status, body = http_get(port, "/metrics", timeout=60, headers=PROMETHEUS_HEADERS)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return parse_metrics(body.decode(), prefixes)


def total(samples: list[Sample], name: str, **match: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x
                                                               for k, x in match.items()))


def buckets(samples: list[Sample], name: str) -> dict[float, float]:
    """Cumulative bucket counts of a label-less histogram `name` (le -> count)."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket":
            out[float(lab["le"])] = out.get(float(lab["le"]), 0.0) + v
    return out


def share_at_most(bound: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Fraction of observations <= bound (exact when bound is a bucket edge)."""
    les = sorted(after)
    n = after[les[-1]] - before.get(les[-1], 0.0)
    if n <= 0:
        return float("nan")
    edge = max((le for le in les if le <= bound), default=None)
    if edge is None:
        return 0.0
    return (after[edge] - before.get(edge, 0.0)) / n


# --- server-side arrival log ---


def arrivals(log: Path, t_from: float, t_to: float) -> dict[str, list[float]]:
    """Per path, the arrival times a server logged (`epoch path` lines) in [t_from, t_to)."""
    out: dict[str, list[float]] = defaultdict(list)
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        ts, _, path = line.partition(" ")
        try:
            t = float(ts)
        except ValueError:
            continue
        if t_from <= t < t_to:
            out[path].append(t)
    return out


def external_lag(arr: dict[str, list[float]], interval: float) -> list[float]:
    """Start lag seen from the server: each arrival against its target's least-late one.

    Arrival k of a target should come k intervals after its schedule's origin, estimated as
    the least-late arrival; lag = how much later each came (a lag every probe of a target
    shares is invisible; the scheduler's start jitter makes one unlikely).
    """
    lags: list[float] = []
    for times in arr.values():
        times.sort()
        first = times[0]
        slots = [round((t - first) / interval) for t in times]
        origin = min(t - k * interval for t, k in zip(times, slots, strict=True))
        lags += [t - k * interval - origin for t, k in zip(times, slots, strict=True)]
    return lags


# --- statistics and output -------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def table(title: str, rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "| " + " | ".join("-" * w for w in widths) + " |"
    fmt = [("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
           for r in cells]
    return "\n".join([f"\n### {title}\n", fmt[0], line, *fmt[1:]])


def emit(result: dict[str, object], out: Path | None) -> None:
    """Machine-readable result, for run_all.py and docs/performance.md."""
    if out is not None:
        out.write_text(json.dumps(result, indent=2))


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def write_urls(procs: Procs, name: str, urls: Sequence[str]) -> Path:
    path = procs.tmp / f"{name}.urls"
    path.write_text("\n".join(urls) + "\n")
    return path


def run_load(procs: Procs, mode: str, urls: Path, args: Sequence[str], window: float,
             warmup: float, cpu: str | None = None, env: dict[str, str] | None = None) -> dict:
    """Run bench/_load.py in its own process and return its JSON result."""
    argv = [PY, str(BENCH / "_load.py"), mode, "--urls", str(urls), "--warmup", str(warmup),
            "--window", str(window), *args]
    p = procs.start(argv, f"load-{mode}", cpu=cpu, env=env, stdout=subprocess.PIPE)
    try:
        out, _ = p.communicate(timeout=warmup + window + 90)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        log = procs.log(f"load-{mode}")[-2000:]
        raise RuntimeError(f"{mode} load did not finish; log:\n{log}") from None
    procs.stop(p)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        log = procs.log(f"load-{mode}")[-2000:]
        raise RuntimeError(f"{mode} load printed no result; log:\n{log}")
    return json.loads(lines[-1])


def uses_uvloop(pid: int) -> bool:
    """Whether uvloop's extension is mapped into the process (evidence, not proof, of use)."""
    try:
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def daemon_available() -> bool:
    return (ROOT / "probe" / "daemon" / "run.py").exists()

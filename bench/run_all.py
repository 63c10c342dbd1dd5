"""Run every benchmark (1-5) one after another and print a summary of the goals as ratios.

    python bench/run_all.py [--quick] [--out DIR]

Each benchmark prints its own table as it finishes and leaves its JSON in DIR (default
bench/results/, ignored by git). --quick shortens every window (numbers get noisier). Needs:
Debian prometheus-blackbox-exporter and nginx-light (apt-get install), the project installed
(`pip install -e .`), a quiet machine (the figures are CPU seconds and lags: anything else
running on the same cores shows up in them; each benchmark prints the load average it met).
Loopback only; every benchmark ends its processes and stops by itself within a few minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, PY, fmt, machine, other_load, table

QUICK = {
    "cpu_per_probe": ["--window", "10", "--warmup", "4"],
    "scale": ["--quiet", "8", "--scraped", "20", "--scrape-every", "10"],
    "accuracy": ["--window", "15", "--warmup", "4"],
    "ws_sessions": ["--window", "8", "--warmup", "4"],
}


def run(name: str, out: Path, quick: bool) -> dict | None:
    path = out / f"{name}.json"
    argv = [PY, str(BENCH / f"{name}.py"), "--json", str(path), *(QUICK[name] if quick else [])]
    print(f"\n=== {name} (load average {other_load():.2f}) ===", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv)
    try:
        code = proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the benchmark ends its own processes on the way out
        code = proc.wait(60)
    print(f"--- {name}: exit {code}, {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(path.read_text()) if code == 0 and path.exists() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--only", default="cpu_per_probe,scale,accuracy,ws_sessions")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res = {name: run(name, a.out, a.quick) for name in a.only.split(",")}
    rows: list[list[str]] = []
    cpu = res.get("cpu_per_probe")
    for r in (cpu or {}).get("results", []):
        d, bb, fl = (r.get(k, {}).get("cpu_per_1000") for k in ("daemon", "blackbox", "floor"))
        if d and bb and fl:
            k = r["targets"]
            rows.append([f"1. CPU per HTTP probe, {k}/s", f"{d:.3f} ms", f"{bb:.3f} ms (blackbox)",
                         fmt(d / bb), "<= 0.6", "yes" if d / bb <= 0.6 else "no"])
            rows.append([f"2. overhead over floor, {k}/s", f"{d:.3f} ms", f"{fl:.3f} ms (aiohttp)",
                         fmt(d / fl), "<= 1.3", "yes" if d / fl <= 1.3 else "no"])
    sc = res.get("scale")
    if sc:
        for key, what in (("sustained_scraped", "scraped /15 s"),
                          ("sustained_unscraped", "unscraped")):
            n = sc[key]
            rows.append([f"3. targets at 1 s on 1 core ({what})", str(n), "2000 (goal)",
                         fmt(n / 2000), ">= 1", "yes" if n >= 2000 else "no"])
    acc = res.get("accuracy")
    if acc:
        loads = sorted({int(k.split("@")[1]) for k in acc["results"]})
        n = loads[-1]
        d, bb = acc["results"][f"daemon@{n}"], acc["results"][f"blackbox@{n}"]
        ratio = d["err_p99"] / bb["err_p99"]
        rows.append([f"4. latency error p99, {n} other targets", f"{d['err_p99'] * 1000:.2f} ms",
                     f"{bb['err_p99'] * 1000:.2f} ms (blackbox)", fmt(ratio), "<= 1",
                     "yes" if ratio <= 1 else "no"])
        ds = acc["results"].get(f"daemon-scraped@{n}")
        if ds:
            ratio = ds["err_p99"] / bb["err_p99"]
            rows.append([f"4. same, daemon scraped every {acc.get('scrape_every', 15):g} s",
                         f"{ds['err_p99'] * 1000:.2f} ms", f"{bb['err_p99'] * 1000:.2f} ms",
                         fmt(ratio), "<= 1", "yes" if ratio <= 1 else "no"])
    ws = res.get("ws_sessions")
    if ws:
        d, b = ws["per_1000"]["daemon"], ws["per_1000"]["bare"]
        rows.append(["5. CPU per JWT WS session", f"{d:.3f} ms", f"{b:.3f} ms (bare)",
                     fmt(d / b), "-", "-"])
        bd, bbare = ws["best"]["daemon"], ws["best"]["bare"]
        rows.append(["5. WS sessions/s on 1 core", str(bd), f"{bbare} (bare)",
                     fmt(bd / bbare if bbare else float("nan")), "-", "-"])
    print(f"\nmachine: {machine()}")
    print(table("Summary (ratios against baselines measured in the same run)", rows,
                ["measure", "stageprobe", "baseline", "ratio", "goal", "met"]))


if __name__ == "__main__":
    main()

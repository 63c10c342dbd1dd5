"""What bench/soak.py reads from the daemon's /metrics: results, failure classes, lag buckets.

Only three series are read, with a regex rather than a full exposition parser: the soak runs in
the daemon's own process, and a full parse of 10 000 samples would block the daemon's event loop
long enough to show up as the very scheduler lag being measured.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass
class Scrape:
    results: dict[tuple[str, str], float]
    failures: dict[tuple[str, str], float]
    lag_buckets: list[tuple[float, float]]  # (le, cumulative count)


_SAMPLE = re.compile(
    r"^(probe_results_total|probe_failures_total|probe_scheduler_lag_seconds_bucket)"
    r"\{([^}]*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Scrape:
    results: dict[tuple[str, str], float] = {}
    failures: dict[tuple[str, str], float] = {}
    buckets: list[tuple[float, float]] = []
    for m in _SAMPLE.finditer(text):
        labels = dict(_LABEL.findall(m.group(2)))
        value = float(m.group(3))
        if m.group(1) == "probe_results_total":
            results[(labels["target"], labels["result"])] = value
        elif m.group(1) == "probe_failures_total":
            failures[(labels["target"], labels["failure"])] = value
        else:
            buckets.append((float(labels["le"]), value))
    return Scrape(results, failures, sorted(buckets))


def lag_p99(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """p99 of the lag observed between two scrapes, as the upper bound of its bucket."""
    prev = dict(before)
    window = [(le, count - prev.get(le, 0.0)) for le, count in after]
    total = window[-1][1] if window else 0.0
    if total <= 0:
        return None
    for le, count in window:
        if count >= 0.99 * total:
            return le
    return math.inf


def misclassified(
    expected: dict[str, str | None], scrape: Scrape
) -> dict[str, dict[str, float]]:
    """target -> {class seen: count} for every result its fault should not have produced
    (`expected`: target -> the failure class its fault must produce, None for a success)."""
    wrong: dict[str, dict[str, float]] = {}
    present = {name for name, _ in scrape.results}
    for name, exp in expected.items():
        if name not in present:
            continue
        bad: dict[str, float] = {}
        if exp is None:
            if n := scrape.results.get((name, "failure"), 0):
                for (target, failure), count in scrape.failures.items():
                    if target == name and count:
                        bad[failure] = count
                bad = bad or {"failure": n}
        else:
            if n := scrape.results.get((name, "success"), 0):
                bad["success"] = n
            for (target, failure), count in scrape.failures.items():
                if target == name and failure != exp and count:
                    bad[failure] = count
        if bad:
            wrong[name] = bad
    return wrong


def probes_total(scrape: Scrape) -> int:
    return int(sum(scrape.results.values()))

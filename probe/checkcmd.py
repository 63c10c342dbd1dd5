"""`probe check`: probe a config's targets without a daemon and answer "ready, or why not".

Without --wait, one round that honours the thresholds: each target is probed at its interval
until its state is decided (ready or failing; a ready target with a latency target also until
`min_samples` samples give a latency verdict), and at most
`success_threshold + failure_threshold - 1 (+ min_samples)` times, so a flapping target that never
decides ends the round as pending with its last failure instead of holding CI forever.

With --wait D, every target is probed at its interval until the gate is ready (critical latency
targets with their verdict in) or D has passed; progress goes to stderr. At the deadline the
in-flight probes are cancelled and the verdict is what was seen so far.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import structlog

from probe.checks import CheckContext
from probe.cli import EXIT_NOT_READY, EXIT_READY, config_path
from probe.config import Config, Target, load_config
from probe.credentials import Credentials
from probe.logging import configure
from probe.loop import run_loop
from probe.outcome import Outcome
from probe.readiness import Readiness, Verdict
from probe.report import Progress, emit
from probe.scheduler import load_check, probe_once
from probe.selection import select_config

log = structlog.get_logger("probe.check")
TICK = 1.0  # how often the progress line is refreshed while nothing changes


def _decided(readiness: Readiness, name: str) -> bool:
    tv = readiness.target(name)
    if tv is None:
        return True
    return tv.state == "failing" or (tv.state == "ready" and not readiness.awaiting_latency(name))


async def _drive(target: Target, readiness: Readiness, ctx: CheckContext, stop: asyncio.Event,
                 changed: asyncio.Event, one_round: bool, crashed: set[str]) -> None:
    loop = asyncio.get_running_loop()
    check = load_check(target)
    limit = target.success_threshold + target.failure_threshold - 1
    if target.latency is not None:
        limit += target.latency.min_samples
    probes = 0
    while not stop.is_set():
        started = loop.time()
        outcome = await probe_once(target, check, ctx, crashed=crashed)
        readiness.observe(outcome, time.time())
        _log_probe(outcome)
        probes += 1
        changed.set()
        if one_round and (probes >= limit or _decided(readiness, target.name)):
            return
        delay = target.interval - (loop.time() - started)
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass


def _log_probe(outcome: Outcome) -> None:
    """`-v`: one DEBUG line per probe, the result in `message` (what a log viewer shows)."""
    took = f"{outcome.duration * 1000:.0f}ms"
    if outcome.success:
        log.debug(f"probe {outcome.target}: ok in {took}", target=outcome.target, ok=True)
    else:
        log.debug(f"probe {outcome.target}: {outcome.failure}: {outcome.detail} ({took})",
                  target=outcome.target, ok=False, failure=str(outcome.failure))


def _settled(readiness: Readiness, config: Config, v: Verdict) -> bool:
    return v.ready and not any(readiness.awaiting_latency(t.name)
                               for t in config.targets if t.critical)


async def run_check(config: Config, expect_version: str | None = None,
                    wait: float | None = None, progress: Progress | None = None) -> Verdict:
    """Probe until decided (one round) or until ready / `wait` seconds; return the verdict."""
    loop = asyncio.get_running_loop()
    readiness = Readiness(config, expect_version)
    ctx = CheckContext(credentials=Credentials(config.credentials),
                       expect_version=readiness.expect_version)
    stop, changed = asyncio.Event(), asyncio.Event()
    crashed: set[str] = set()
    tasks = [asyncio.create_task(_drive(t, readiness, ctx, stop, changed, wait is None, crashed))
             for t in config.targets]
    try:
        if wait is None:
            await asyncio.gather(*tasks)
        else:
            start = loop.time()
            deadline = start + wait
            while True:
                changed.clear()
                v = readiness.verdict(time.time())
                if progress is not None:
                    progress.update(v, loop.time() - start)
                remaining = deadline - loop.time()
                if _settled(readiness, config, v) or remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(min(remaining, TICK)):
                        await changed.wait()
                except TimeoutError:
                    pass
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctx.credentials.aclose()
        if progress is not None:
            progress.close()
    return readiness.verdict(time.time())


def main(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))  # ConfigError: the CLI prints it, exit 2
    config = select_config(config, args.target, args.exclude)  # UsageError: an unknown name
    # warnings only (a check bug's traceback goes to stderr; stdout is the report); -v adds a
    # line per probe
    configure(level="debug" if args.verbose else "warning")
    progress = Progress(args.wait) if args.wait is not None and not args.quiet else None
    # Readiness falls back to the config's expect_version when --expect-version is not given
    verdict = run_loop(run_check(config, args.expect_version, args.wait, progress))
    emit(verdict, args.format, args.junit, out=sys.stdout, quiet=args.quiet)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY

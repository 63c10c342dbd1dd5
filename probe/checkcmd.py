"""`probe check`: probe a config's targets without a daemon and answer "ready, or why not".

Without --wait, one round that honours the thresholds: each target is probed at its interval
(an undecided one sooner: scheduler.next_probe) until its state is decided (ready or failing;
a ready target with a latency target also until `min_samples` samples give a latency verdict),
and at most
`success_threshold + failure_threshold - 1 (+ min_samples)` times, so a flapping target that never
decides ends the round as pending with its last failure instead of holding CI forever. A target
that is done keeps being probed at its interval until every target is: the verdict is given at
the end of the round, and evidence older than `2 x interval + timeout` by then is `stale`.

`--expect-version` must check something: an empty value (an unset `$GIT_SHA`) or a config where
no target has `version_path` is a usage error (exit 2), never a silent pass.

With --wait D, every target is probed at its interval until the gate is ready (critical latency
targets with their verdict in) or D has passed; progress goes to stderr. At the deadline the
in-flight probes are cancelled and the verdict is what was seen so far.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from probe.checks import CheckContext
from probe.cli import EXIT_NOT_READY, EXIT_READY, EXIT_USAGE, config_path
from probe.config import Config, Target, load_config, no_version_path
from probe.credentials import Credentials
from probe.daemon.scheduler import fast_budget, load_check, next_probe, probe_once
from probe.daemon.statelog import log_probe
from probe.logging import configure
from probe.loop import run_loop
from probe.readiness import Readiness, Verdict
from probe.report import Progress, emit
from probe.selection import select_config

TICK = 1.0  # how often the progress line is refreshed while nothing changes
SHOW = 0.25  # in one round, the progress line is refreshed at most this often


def _decided(readiness: Readiness, name: str) -> bool:
    tv = readiness.target(name, time.time())
    if tv is None:
        return True
    return tv.state == "failing" or (tv.state == "ready" and not readiness.awaiting_latency(name))


async def _drive(target: Target, readiness: Readiness, ctx: CheckContext, stop: asyncio.Event,
                 changed: asyncio.Event, done: set[str] | None, crashed: set[str]) -> None:
    """Probe `target` at its interval until `stop`; with `done` (one round), add its name there
    once its state is decided or its probe limit is reached, and keep its evidence fresh."""
    loop = asyncio.get_running_loop()
    check = load_check(target)
    limit = fast_left = fast_budget(target)
    probes = 0
    while not stop.is_set():
        started = loop.time()
        outcome = await probe_once(target, check, ctx, crashed=crashed)
        readiness.observe(outcome, time.time())
        log_probe(outcome)  # DEBUG: shown with -v
        probes += 1
        if done is not None and target.name not in done and (
                probes >= limit or _decided(readiness, target.name)):
            done.add(target.name)
        changed.set()
        # the daemon's rule: the cadence, or soon while undecided (FAST_INTERVAL, a few times)
        next_at, fast_left = next_probe(target, started, loop.time(),
                                        readiness.undecided(target.name), fast_left)
        delay = next_at - loop.time()
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass


def _awaiting(readiness: Readiness, config: Config) -> list[str]:
    """Critical targets still short of the latency samples a verdict needs."""
    return [t.name for t in config.targets if t.critical and readiness.awaiting_latency(t.name)]


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
    done: set[str] | None = set() if wait is None else None
    tasks = [asyncio.create_task(_drive(t, readiness, ctx, stop, changed, done, crashed))
             for t in config.targets]
    start = loop.time()
    deadline = start + (wait if wait is not None else float("inf"))
    shown = -SHOW
    try:
        while True:
            changed.clear()
            for task in tasks:  # a loop only ends when stopped: one that ended is a bug
                if task.done():
                    task.result()
            # a verdict costs O(targets): in one round it is only for the progress line, so
            # at most every SHOW seconds
            finished = done is not None and len(done) == len(tasks)
            show = progress is not None and (done is None or finished
                                             or loop.time() - shown >= SHOW)
            v = readiness.verdict(time.time()) if show or done is None else None
            if v is not None and progress is not None and show:
                shown = loop.time()
                progress.update(v, shown - start, _awaiting(readiness, config))
            if finished:
                break
            if done is None and v is not None and (
                    _settled(readiness, config, v) or deadline - loop.time() <= 0):
                break
            try:
                async with asyncio.timeout(min(deadline - loop.time(), TICK)):
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


def expect_version_error(expect: str | None, config: Config) -> str | None:
    """Why `--expect-version` cannot be honoured (None: it can, or it was not given)."""
    if expect is None:
        return None
    if not expect.strip():
        return ("--expect-version is empty (an unset variable, such as $GIT_SHA?): "
                "it would check nothing")
    if not any(t.version_path for t in config.targets):
        return no_version_path(expect)
    return None


def main(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))  # ConfigError: the CLI prints it, exit 2
    config = select_config(config, args.target, args.exclude)  # UsageError: an unknown name
    why = expect_version_error(args.expect_version, config)
    if why is not None:
        print(f"probe check: {why}", file=sys.stderr)
        return EXIT_USAGE
    # warnings only (a check bug's traceback goes to stderr; stdout is the report); -v adds a
    # line per probe
    configure(level="debug" if args.verbose else "warning")
    # what it waits for, also in one round (no --wait): a live line on a terminal, a line per
    # change in a CI log
    progress = None if args.quiet else Progress(args.wait)
    # Readiness falls back to the config's expect_version when --expect-version is not given
    verdict = run_loop(run_check(config, args.expect_version, args.wait, progress))
    emit(verdict, args.format, args.junit, out=sys.stdout, quiet=args.quiet)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY

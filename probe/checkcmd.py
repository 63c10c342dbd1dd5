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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from probe.checks import CheckContext, checker_for
from probe.cli import EXIT_NOT_READY, EXIT_READY, config_path
from probe.config import Config, Target, load_config
from probe.credentials import CredentialError, Credentials
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness, Verdict
from probe.report import Progress, emit

BACKSTOP = 0.5  # on top of target.timeout, in case a check overruns its own budget
TICK = 1.0  # how often the progress line is refreshed while nothing changes

T = TypeVar("T")


async def probe_once(target: Target, ctx: CheckContext) -> Outcome:
    """Run one check; whatever happens, the answer is an Outcome (a raising check is a bug,
    reported as `protocol` by exception type only: its message might carry a URL or token)."""
    started_at, t0 = time.time(), time.monotonic()

    def failed(failure: Failure, detail: str) -> Outcome:
        return Outcome.failed(target.name, target.kind, failure, detail,
                              time.monotonic() - t0, started_at=started_at)

    try:
        async with asyncio.timeout(target.timeout + BACKSTOP):
            return await checker_for(target)(target, ctx)
    except TimeoutError:
        return failed(Failure.TIMEOUT, f"no result within {target.timeout:g}s")
    except CredentialError as exc:
        return failed(Failure.CREDENTIAL, str(exc))
    except Exception as exc:
        return failed(Failure.PROTOCOL,
                      f"the {target.kind} check raised {type(exc).__name__} (a stageprobe bug)")


def _decided(readiness: Readiness, name: str) -> bool:
    tv = readiness.target(name)
    if tv is None:
        return True
    return tv.state == "failing" or (tv.state == "ready" and not readiness.awaiting_latency(name))


async def _drive(target: Target, readiness: Readiness, ctx: CheckContext, stop: asyncio.Event,
                 changed: asyncio.Event, one_round: bool) -> None:
    loop = asyncio.get_running_loop()
    limit = target.success_threshold + target.failure_threshold - 1
    if target.latency is not None:
        limit += target.latency.min_samples
    probes = 0
    while not stop.is_set():
        started = loop.time()
        outcome = await probe_once(target, ctx)
        readiness.observe(outcome, time.time())
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
    tasks = [asyncio.create_task(_drive(t, readiness, ctx, stop, changed, wait is None))
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


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where available
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())


def main(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))  # ConfigError: the CLI prints it, exit 2
    expect = args.expect_version or config.expect_version
    progress = Progress(args.wait) if args.wait is not None else None
    verdict = run_async(lambda: run_check(config, expect, args.wait, progress))
    emit(verdict, args.format, args.junit, out=sys.stdout)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY

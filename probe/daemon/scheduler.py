"""One asyncio loop per target: fixed cadence, start jitter, a hard timeout, bounded concurrency.

Why each rule:
- fixed cadence from the previous *scheduled* time, so probes do not drift later and later;
- an overrun skips the missed slots instead of bursting to catch up (a burst after a stall would
  hammer a struggling staging backend exactly when it is weakest);
- a target never has two probes at once (its loop awaits each probe before scheduling the next);
- an undecided target (pending, or ready without its latency samples) is probed again
  FAST_INTERVAL after its probe ended, when that is sooner than its cadence: a healthy target
  is called ready in seconds, not `success_threshold x interval`. At most fast_budget() such
  probes in a row, so a target that never decides (flapping) is back at its interval soon;
- asyncio.timeout(target.timeout + 0.5) around every check is a backstop: a check that ignores its
  own budget still cannot hold its loop;
- one global semaphore caps probes in flight, and the time a probe waits for it counts as lag;
- an exception from a check becomes an Outcome (`protocol`), logged once per target with its
  traceback, so a bug in one check never kills a loop or hides the other targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Collection

import structlog

from probe.checks import Check, CheckContext, checker_for
from probe.config import Config, Target
from probe.outcome import Failure, Outcome

log = structlog.get_logger("probe.scheduler")

BACKSTOP = 0.5  # seconds past target.timeout before the scheduler cancels a check itself
HEARTBEAT = 1.0  # seconds between heartbeat ticks (the /livez signal)
STOP_GRACE = 2.0  # seconds stop() waits for cancelled probes to unwind
FAST_INTERVAL = 1.0  # seconds from an undecided target's probe ending to its next one

OnOutcome = Callable[[Outcome, Target], None]
OnLag = Callable[[float], None]
Undecided = Callable[[str], bool]


def fast_budget(target: Target) -> int:
    """Probes that decide a target whatever it answers: enough to reach either threshold (and to
    fill the latency window); past that, it is flapping and more haste would not settle it."""
    n = target.success_threshold + target.failure_threshold - 1
    return n + max((b.min_samples for b in target.latencies), default=0)


def load_check(target: Target, checker: Callable[[Target], Check] = checker_for) -> Check:
    """The target's check, or (a missing or broken check module) one that raises why, so the
    failure is reported like any other check bug instead of killing the caller."""
    try:
        return checker(target)
    except Exception as exc:
        error, trace = exc, exc.__traceback__

        async def broken(_target: Target, _ctx: CheckContext) -> Outcome:
            raise error.with_traceback(trace)  # the load's traceback, not one that grows

        return broken


async def probe_once(
    target: Target, check: Check, ctx: CheckContext, *, crashed: set[str] | None = None
) -> Outcome:
    """Run one check; whatever happens (short of cancellation) the answer is an Outcome.

    Shared by the daemon's scheduler and `probe check`, so both report a stalled or raising
    check the same way. A raising check is a bug: it becomes `protocol`, named by exception
    type only (its message might carry a URL or token), and is logged with its traceback once
    per target name in `crashed` (every time when None), not once per probe.
    """
    t0 = time.perf_counter()
    started_at = time.time()
    try:
        async with asyncio.timeout(target.timeout + BACKSTOP):
            outcome = await check(target, ctx)
        if not isinstance(outcome, Outcome):
            raise TypeError(f"the check returned {type(outcome).__name__}, not an Outcome")
        return outcome
    except TimeoutError:
        return Outcome.failed(
            target.name, target.kind, Failure.TIMEOUT,
            f"no complete answer within {target.timeout:g}s", time.perf_counter() - t0,
            started_at=started_at,
        )
    except Exception as exc:
        if crashed is None or target.name not in crashed:
            if crashed is not None:
                crashed.add(target.name)
            log.error("check raised", target=target.name, kind=target.kind, exc_info=exc)
        return Outcome.failed(
            target.name, target.kind, Failure.PROTOCOL,
            f"internal error in the {target.kind} check: {type(exc).__name__}",
            time.perf_counter() - t0, started_at=started_at,
        )


def next_probe(target: Target, scheduled: float, now: float, undecided: bool,
               fast_left: int) -> tuple[float, int]:
    """(when the next probe starts, fast probes left) after the probe scheduled at `scheduled`
    ended at `now`: the next slot of the cadence (an overrun skips the missed slots instead of
    bursting), or FAST_INTERVAL from now for an undecided target with fast probes left."""
    period = target.interval
    next_at = scheduled + period
    if next_at <= now:
        next_at += period * (int((now - next_at) // period) + 1)
    if not undecided:
        return next_at, fast_budget(target)
    if fast_left > 0:
        return min(next_at, now + FAST_INTERVAL), fast_left - 1
    return next_at, 0


class Scheduler:
    """Runs every target of a config on its own loop until stop()."""

    def __init__(
        self, config: Config, ctx: CheckContext, on_outcome: OnOutcome, on_lag: OnLag,
        *, checker: Callable[[Target], Check] = checker_for, undecided: Undecided | None = None,
    ) -> None:
        """`checker` picks a target's check; tests pass their own to make checks raise or stall.
        `undecided(name)` says a target wants its next probe soon (Readiness.undecided)."""
        self._undecided = undecided
        self._config = config
        self._checker = checker
        self._ctx = ctx
        self._on_outcome = on_outcome
        self._on_lag = on_lag
        self._sem = asyncio.Semaphore(config.concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, Target] = {}
        self._last_start: dict[str, float] = {}  # monotonic start of each target's last probe
        self._crashed: set[str] = set()  # targets whose check raised (logged once each)
        self._heartbeat: asyncio.Task[None] | None = None
        self._running = False
        self.last_tick = time.monotonic()

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.last_tick = time.monotonic()
        self._heartbeat = asyncio.create_task(self._beat(), name="probe-heartbeat")
        for target in self._config.targets:
            self._spawn(target)

    async def stop(self) -> None:
        """Cancel every loop and in-flight probe; wait (briefly) for them to unwind."""
        self._running = False
        tasks = list(self._tasks.values())
        if self._heartbeat is not None:
            tasks.append(self._heartbeat)
            self._heartbeat = None
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)

    def reconfigure(self, config: Config, ctx: CheckContext | None = None,
                    restart: Collection[str] = ()) -> None:
        """Start added targets, stop removed ones, restart changed ones; keep unchanged loops.

        `restart` names targets to restart although their Target is equal: the credential they
        use changed (readiness.diff_configs decides, once, for the daemon)."""
        if ctx is not None:
            self._ctx = ctx
        if config.concurrency != self._config.concurrency:
            self._sem = asyncio.Semaphore(config.concurrency)  # holders release the old one
        old = self._targets
        self._config = config
        new = {t.name: t for t in config.targets}
        if not self._running:
            self._targets = new
            return
        for name in old.keys() - new.keys():
            self._cancel(name)
        for name, target in new.items():
            if name not in old:
                self._spawn(target)
            elif old[name] != target or name in restart:
                previous = self._cancel(name)
                self._spawn(target, after=previous)

    def stuck(self, now: float | None = None, max_age: float = 10.0) -> list[str]:
        """Why the scheduler is not healthy (empty: healthy). Read by /livez.

        Stuck means: the heartbeat has not ticked for `max_age` seconds (the event loop is
        blocked or the scheduler stopped), or a target loop is gone, or a target has not started
        a probe for two intervals plus its timeout plus `max_age` (a loop wedged somewhere).
        """
        now = time.monotonic() if now is None else now
        reasons = []
        if not self._running:
            reasons.append("scheduler is not running")
        elif now - self.last_tick > max_age:
            reasons.append(f"scheduler heartbeat is {now - self.last_tick:.1f}s old")
        for name, task in self._tasks.items():
            if task.done():
                reasons.append(f"target {name}: its probe loop has ended")
                continue
            target = self._targets[name]
            last = self._last_start.get(name)
            limit = 2 * target.interval + target.timeout + max_age
            if last is not None and now - last > limit:
                reasons.append(f"target {name}: no probe started for {now - last:.0f}s")
        return reasons

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self, target: Target, after: asyncio.Task[None] | None = None) -> None:
        self._targets[target.name] = target
        self._last_start[target.name] = time.monotonic()
        self._tasks[target.name] = asyncio.create_task(
            self._loop(target, after), name=f"probe:{target.name}"
        )

    def _cancel(self, name: str) -> asyncio.Task[None] | None:
        task = self._tasks.pop(name, None)
        self._targets.pop(name, None)
        self._last_start.pop(name, None)
        self._crashed.discard(name)
        if task is not None:
            task.cancel()
        return task

    async def _beat(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(HEARTBEAT)

    async def _loop(self, target: Target, after: asyncio.Task[None] | None) -> None:
        if after is not None:  # a changed target: never overlap the old loop's last probe
            await asyncio.wait([after])
        loop = asyncio.get_running_loop()
        period = target.interval
        check = load_check(target, self._checker)
        next_at = loop.time() + random.uniform(0, min(period, 1.0))
        fast_left = fast_budget(target)
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            async with self._sem:
                started = loop.time()
                self._last_start[target.name] = time.monotonic()
                self._lag(started - next_at)
                outcome = await probe_once(target, check, self._ctx, crashed=self._crashed)
            if self._tasks.get(target.name) is not asyncio.current_task():
                return  # removed or replaced while probing: its result no longer counts
            self._deliver(outcome, target)
            undecided = self._undecided is not None and self._undecided(target.name)
            next_at, fast_left = next_probe(target, next_at, loop.time(), undecided, fast_left)

    def _deliver(self, outcome: Outcome, target: Target) -> None:
        try:
            self._on_outcome(outcome, target)
        except Exception as exc:  # a consumer bug must not stop probing
            log.error("outcome handler raised", target=target.name, exc_info=exc)

    def _lag(self, seconds: float) -> None:
        with contextlib.suppress(Exception):
            self._on_lag(max(0.0, seconds))

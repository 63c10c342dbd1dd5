"""`--target NAME` / `--exclude NAME`: judge a subset of the targets, for `probe check` and `gate`.

A name that matches no target is a usage error naming it (exit 2), never a silent "ready 0/0":
a typo in a CI file must fail loudly. `probe check` narrows the config before probing, so the
other targets are never probed; `probe gate` narrows each verdict the daemon answers, so the
daemon's own gate (all critical targets) is re-judged over the selected targets only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from probe.cli import UsageError
from probe.config import Config
from probe.readiness import Verdict

SYNTHETIC_KIND = "gate"  # the kind of gate.synthetic() entries: reasons, not targets


def chosen(names: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The names kept, in their order; UsageError for a name that is none of `names`."""
    known = set(names)
    unknown = [n for n in (*include, *exclude) if n not in known]
    if unknown:
        listed = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
        raise UsageError(f"no target named {', '.join(map(repr, dict.fromkeys(unknown)))} "
                         f"(targets: {listed})")
    keep = set(include) if include else known
    keep -= set(exclude)
    if not keep:
        raise UsageError("--target/--exclude leave no target to judge")
    return [n for n in names if n in keep]


def select_config(config: Config, include: Sequence[str], exclude: Sequence[str]) -> Config:
    if not include and not exclude:
        return config
    keep = set(chosen([t.name for t in config.targets], include, exclude))
    return config.model_copy(update={"targets": [t for t in config.targets if t.name in keep]})


def narrow(v: Verdict, include: Iterable[str], exclude: Iterable[str]) -> Verdict:
    """The verdict over the selected targets: ready when every selected critical one is.

    A verdict that holds only reasons (the daemon unreachable, draining) passes unchanged: it
    names no targets to select from, and it is not ready whatever the selection.
    """
    include, exclude = list(include), list(exclude)
    real = [t for t in v.targets if t.kind != SYNTHETIC_KIND]
    if not (include or exclude) or not real:
        return v
    keep = set(chosen([t.name for t in real], include, exclude))
    targets = [t for t in real if t.name in keep]
    ready = all(t.ready for t in targets if t.critical)
    return Verdict(ready=ready, targets=targets, since=v.since if ready == v.ready else None)


def narrowed(fetch: Callable[[Any, float], Awaitable[Verdict]], include: Sequence[str],
             exclude: Sequence[str]) -> Callable[[Any, float], Awaitable[Verdict]]:
    """`probe gate`'s fetch, its verdicts narrowed to the selected targets."""
    if not include and not exclude:
        return fetch

    async def fetch_narrowed(session: Any, budget: float) -> Verdict:
        return narrow(await fetch(session, budget), include, exclude)

    return fetch_narrowed

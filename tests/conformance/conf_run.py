"""Playing the cases against one running server: stageprobe's WebSocket check for each case, and
the reference client (node/client.js, one process for all of a server's cases), all at once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf_cases import BY_ID, KNOWN_DISAGREEMENTS, TOKEN, Case, verdict
from pydantic import ValidationError

from probe.checks import CheckContext
from probe.checks.websocket import check
from probe.config import Config
from probe.credentials import Credentials

HERE = Path(__file__).parent
CLIENT = HERE / "node" / "client.js"


@dataclass
class Result:
    """One case on one server: both verdicts and what they were drawn from."""

    case: str
    stageprobe: str
    detail: str
    reference: str
    seen: dict[str, Any]  # the reference client's observation
    close_code: int | None = None  # the close code stageprobe's Outcome carries


def reference_verdict(seen: dict[str, Any]) -> str:
    """The reference client's observation in stageprobe's vocabulary (browser semantics: a
    handshake that fails for a missing subprotocol is a rejected upgrade; the server's close
    code when it closed first, or when its own close crossed ours)."""
    status = seen.get("status")
    if status is not None:
        return f"ws_auth:{status}" if status in (401, 403) else f"ws_rejected:{status}"
    error = seen.get("error") or ""
    if not seen.get("opened"):
        if "subprotocol" in error:
            return "ws_rejected"
        if "ECONNREFUSED" in error:
            return "refused"
        if error == "timeout" or "timed out" in error:
            return "timeout"
        if "Invalid" in error or "invalid" in error:
            return "protocol"
        return "disconnected"  # socket hang up, ECONNRESET, closed before the handshake ended
    if seen.get("outcome") == "mismatch":
        return "assertion"
    if seen.get("outcome") == "no_reply":
        return "ws_no_reply"
    code = seen.get("code")
    if "Invalid" in error or "invalid" in error:
        return "protocol"
    if seen.get("server_closed_first"):
        return "ws_dropped" if code in (None, 1006) else f"ws_closed:{code}"
    if code not in (None, 1000, 1006):  # the server's own close crossed ours
        return f"ws_closed:{code}"
    return "success"


SECRET_QUERY = "redirect-secret"  # in every redirect's Location: never in a detail
LASTED = re.compile(r"after (under )?\d+(\.\d+)? ?m?s\b")  # how long a session had lasted


def problems(server: str, r: Result) -> list[str]:
    """What is wrong with one case's result on one server (nothing: it passes). The test fails
    on these, and docs/conformance.md shows them."""
    case = BY_ID[r.case]
    found = []
    if r.reference not in case.expect:
        found.append(f"the reference gave {r.reference}, not one of {sorted(case.expect)}: the "
                     f"case does not test what it says ({r.seen})")
    if SECRET_QUERY in r.detail:
        found.append("a redirect's query is in the detail")
    if TOKEN in r.detail:
        found.append("the credential is in the detail")
    known = KNOWN_DISAGREEMENTS.get((server, r.case))
    if known is None and r.stageprobe != r.reference:
        found.append(f"stageprobe says {r.stageprobe}, a browser-like client {r.reference}")
    elif known is not None and r.stageprobe == r.reference:
        found.append(f"a listed disagreement no longer disagrees: {known}")
    if r.stageprobe == "success" and r.close_code not in (None, 1000):
        found.append(f"a success carrying the server's close code {r.close_code}")
    name, _, code = r.stageprobe.partition(":")
    if name == "ws_closed" and code not in r.detail:
        found.append("the detail does not give the close code")
    if name in ("ws_closed", "ws_dropped") and not LASTED.search(r.detail):
        found.append("the detail does not say how long the session lasted")
    pattern = case.detail.get(r.stageprobe)
    if pattern is not None and not re.search(pattern, r.detail):
        found.append(f"the detail does not match /{pattern}/")
    return found


async def _stageprobe(case: Case, base: str) -> tuple[str, str, int | None]:
    try:
        cfg = Config.model_validate({"targets": [case.target(base)],
                                     "credentials": case.credentials()})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"config error: {where}: {first['msg']}", "", None
    ctx = CheckContext(Credentials(cfg.credentials))
    try:
        outcomes = await asyncio.gather(
            *(check(cfg.targets[0], ctx) for _ in range(case.repeat)))
    finally:
        await ctx.credentials.aclose()
    counts = Counter(verdict(o) for o in outcomes)
    if len(counts) == 1:  # the same every time: the verdict, with the first probe's detail
        outcome = outcomes[0]
        return verdict(outcome), outcome.detail, outcome.close_code
    # A race: name every verdict with how often it came, and show a failed probe's detail.
    mixed = " / ".join(f"{v} ({n} of {case.repeat})" for v, n in sorted(counts.items()))
    failed = next(o for o in outcomes if not o.success)
    success = next((o for o in outcomes if o.success), failed)
    return mixed, failed.detail, success.close_code


async def _reference(cases: list[Case], base: str) -> dict[str, dict[str, Any]]:
    within = max(c.timeout for c in cases) + 10
    proc = await asyncio.create_subprocess_exec(
        "node", str(CLIENT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=CLIENT.parent)
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate(
                json.dumps([c.reference(base) for c in cases]).encode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"reference client exited {proc.returncode}: {err.decode()}"
    return dict(json.loads(out))


async def play(cases: list[Case], base: str) -> dict[str, Result]:
    """Every case against the server at ws:// `base`, stageprobe and the reference at once."""
    reference = asyncio.create_task(_reference(cases, base))
    ours = await asyncio.gather(*(_stageprobe(c, base) for c in cases))
    seen = await reference
    return {
        c.id: Result(c.id, v, detail, reference_verdict(seen[c.id]), seen[c.id], code)
        for c, (v, detail, code) in zip(cases, ours, strict=True)
    }

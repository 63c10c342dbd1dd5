"""stageprobe's WebSocket verdicts against servers no one on the project wrote, each compared with
a browser-like reference client's (node's `ws`): see README.md here and docs/conformance.md.

One test per server x case. A server is started the first time one of its cases runs, plays all
its cases at once (stageprobe and the reference client concurrently), and is stopped before the
next server starts; the results are kept for the session, so docs/conformance.md can be written
at its end (CONFORMANCE_WRITE=1, after a run of every server).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conf_cases import CASES, NOT_APPLICABLE, Case
from conf_doc import write
from conf_run import Result, play, problems
from conf_servers import NODE, SERVERS, started, versions

pytestmark = pytest.mark.conformance

class Runs:
    """Each server's results, played on first use."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.results: dict[str, dict[str, Result]] = {}
        self.errors: dict[str, BaseException] = {}

    def get(self, server: str) -> dict[str, Result]:
        if server in self.errors:
            raise self.errors[server]
        if server not in self.results:
            cases = [c for c in CASES if (server, c.id) not in NOT_APPLICABLE]
            try:
                self.results[server] = asyncio.run(self._play(server, cases))
            except BaseException as exc:
                self.errors[server] = exc
                raise
        return self.results[server]

    async def _play(self, server: str, cases: list[Case]) -> dict[str, Result]:
        async with started(server, self.tmp) as base:
            return await play(cases, base)


def _missing() -> str | None:
    if shutil.which("node") is None or not (NODE / "node_modules" / "ws").is_dir():
        return "node's ws is not installed (npm ci in tests/conformance/node; .ci/run does it)"
    if shutil.which("nginx") is None:
        return "nginx is not installed (.ci/run installs the Debian package)"
    return None


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    missing = _missing()
    if missing and not os.environ.get("CI"):
        pytest.skip(missing)
    runs = Runs(tmp_path_factory.mktemp("conformance"))
    yield runs
    if os.environ.get("CONFORMANCE_WRITE") == "1" and set(runs.results) == set(SERVERS):
        write(runs.results, versions())


MATRIX = [pytest.param(s, c.id, id=f"{s}-{c.id}") for s in SERVERS for c in CASES]


@pytest.mark.parametrize(("server", "case_id"), MATRIX)
def test_case(runs: Runs, server: str, case_id: str) -> None:
    if (server, case_id) in NOT_APPLICABLE:
        pytest.skip(f"n/a: {NOT_APPLICABLE[server, case_id]}")
    found = problems(server, runs.get(server)[case_id])
    assert not found, "; ".join(found)

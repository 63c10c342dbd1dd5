"""Renderings of a Verdict for people and for CI: text, json, junit, github.

Every rendering leads with the cause (`http_status: HTTP 503 (expected 200)`), because the reader's
first question is "why", not "which probe ran". Nothing here adds secrets: details come from the
checks, which never put a credential in them.

JUnit: one testsuite, one testcase per target. A critical target that is not ready is a
<failure> (message = detail, type = failure class); a non-critical one is <skipped> with its reason,
so the counts agree with the gate's exit code. The shape is the common denominator that GitLab,
mikepenz/action-junit-report and dorny/test-reporter all read.

GitHub: workflow commands (`::error title=...::detail`) with GitHub's escaping, and a markdown
table appended to $GITHUB_STEP_SUMMARY when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from probe.latency_window import fmt_ms
from probe.readiness import TargetVerdict, Verdict

SUITE = "stageprobe"
# Characters XML 1.0 cannot carry at all, even escaped; a server's body may contain them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def public_url(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment (where tokens hide).

    Here (not in daemon/server.py) so `probe gate` can show URLs without importing the server.
    """
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{p.port}" if p.port else host
    return urlunsplit((p.scheme, netloc, p.path or ("/" if netloc else ""), "", ""))


def cause(t: TargetVerdict) -> str:
    """`failure: detail`, the one line that says why a target is not ready (`stale: ...` for
    a target whose last result is too old: staleness is a state, not a failure class)."""
    if t.state == "stale" and not t.failure:
        return f"stale: {t.detail}" if t.detail else "stale"
    if t.failure and t.detail:
        return f"{t.failure}: {t.detail}"
    return t.failure or t.detail or t.state


def _mark(t: TargetVerdict) -> str:
    if t.ready:
        return "OK"
    if t.state == "pending" and t.failure is None:
        return "WAIT"
    return "FAIL" if t.critical else "WARN"


def _facts(t: TargetVerdict) -> str:
    parts = []
    if t.status_code is not None:
        parts.append(f"HTTP {t.status_code}" if t.kind == "http" else f"status {t.status_code}")
    if t.close_code is not None:
        parts.append(f"close {t.close_code}")
    if "p95" in t.latency_ms:
        parts.append(f"p95 {fmt_ms(t.latency_ms['p95'])}")
    if t.version:
        parts.append(f"version {t.version}")
    return ", ".join(parts)


def summary(v: Verdict) -> str:
    critical = [t for t in v.targets if t.critical]
    ok = sum(t.ready for t in critical)
    if v.ready:
        return f"READY: {ok}/{len(critical)} critical targets ready"
    blocking = ", ".join(f"{t.name} ({t.failure or t.state})" for t in critical if not t.ready)
    return f"NOT READY: {ok}/{len(critical)} critical targets ready; waiting on {blocking}"


_COLORS = {"OK": "32", "FAIL": "31", "WARN": "33", "WAIT": "36"}  # SGR: green, red, yellow, cyan


def use_color(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Colour only for a person: a terminal, and NO_COLOR (no-color.org) not set to anything."""
    environ = os.environ if env is None else env
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _paint(text: str, sgr: str, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color else text


def verdict_line(v: Verdict, color: bool = False) -> str:
    return _paint(summary(v), "1;32" if v.ready else "1;31", color)


def render_text(v: Verdict, color: bool = False) -> str:
    width = max((len(t.name) for t in v.targets), default=0)
    lines = []
    for t in v.targets:
        what = "ready" if t.ready else cause(t)
        facts = _facts(t)
        if t.ready and facts:
            what += f" ({facts})"
        tail = "" if t.critical else "  [non-critical]"
        mark = _paint(f"{_mark(t):<4}", _COLORS[_mark(t)], color)
        lines.append(f"{mark} {t.name:<{width}}  {what}{tail}")
    lines.append(verdict_line(v, color))
    return "\n".join(lines) + "\n"


def render_json(v: Verdict) -> str:
    return json.dumps(v.to_dict(), indent=2) + "\n"


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def render_junit(v: Verdict, suite: str = SUITE) -> str:
    failures = sum(1 for t in v.targets if not t.ready and t.critical)
    skipped = sum(1 for t in v.targets if not t.ready and not t.critical)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    counts = {"tests": str(len(v.targets)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped), "time": "0"}
    root = ET.Element("testsuites", {"name": suite, **counts})
    ts = ET.SubElement(root, "testsuite", {"name": suite, "timestamp": stamp, **counts})
    for t in v.targets:
        seconds = t.latency_ms.get("p50", 0.0) / 1000.0
        case = ET.SubElement(ts, "testcase", {
            "name": t.name, "classname": f"{suite}.{t.kind or 'target'}", "time": f"{seconds:.3f}",
        })
        facts = f"state={t.state}" + (f", {_facts(t)}" if _facts(t) else "")
        if t.ready:
            ET.SubElement(case, "system-out").text = _xml_text(facts)
            continue
        message = _xml_text(t.detail or t.failure or t.state)
        kind = t.failure or t.state
        if t.critical:
            el = ET.SubElement(case, "failure", {"message": message, "type": kind})
            el.text = _xml_text(f"{cause(t)}\n{facts}")
        else:
            ET.SubElement(case, "skipped", {"message": _xml_text(f"non-critical: {cause(t)}")})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def gh_data(text: str) -> str:
    """Escape a workflow command's message: %, CR, LF (as GitHub's toolkit does)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_property(text: str) -> str:
    """Escape a workflow command property value: also `:` and `,`."""
    return gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(v: Verdict) -> str:
    lines = []
    for t in v.not_ready():
        level = "error" if t.critical else "warning"
        title = gh_property(f"{t.name}: {t.failure or t.state}")
        lines.append(f"::{level} title={title}::{gh_data(cause(t))}")
    if v.ready:
        lines.append(f"::notice title={gh_property('staging ready')}::{gh_data(summary(v))}")
    else:
        lines.append(f"::error title={gh_property('staging not ready')}::{gh_data(summary(v))}")
    return "\n".join(lines) + "\n"


_MD_PUNCT = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def _md(text: str) -> str:
    """Text from a target (a detail quoting its body, say) as one inert Markdown table cell: no
    HTML (`<`, `&`), no code spans, links, emphasis or cell breaks (`|`), no line breaks."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_PUNCT.sub(r"\\\1", text)
    return re.sub(r"[\r\n]+", " ", text)


def markdown_summary(v: Verdict) -> str:
    head = "### :white_check_mark: staging ready" if v.ready else "### :x: staging not ready"
    rows = [head, "", "| | target | state | cause | facts |", "|---|---|---|---|---|"]
    for t in v.targets:
        icon = ":white_check_mark:" if t.ready else (":x:" if t.critical else ":warning:")
        why = "" if t.ready else cause(t)
        name = t.name if t.critical else f"{t.name} (non-critical)"
        rows.append(f"| {icon} | {_md(name)} | {t.state} | {_md(why)} | {_md(_facts(t))} |")
    rows.append("")
    rows.append(_md(summary(v)))
    return "\n".join(rows) + "\n\n"


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit,
             "github": render_github}


def render(v: Verdict, fmt: str) -> str:
    try:
        return RENDERERS[fmt](v)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(RENDERERS)})") from None


def unwritable(path: Path) -> str | None:
    """Why a report cannot be written at `path`, or None: checked before probing, so a wrong
    --junit path fails at once with its reason instead of after a 10-minute wait."""
    if path.is_dir():
        return "is a directory"
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()  # no empty report left behind if the run is interrupted
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def emit(v: Verdict, fmt: str, junit: Path | None = None, out: TextIO | None = None,
         env: Mapping[str, str] | None = None, quiet: bool = False) -> None:
    """What `probe check` and `probe gate` do with a verdict: print, JUnit file, step summary.

    `quiet` (-q) shortens the text format to its verdict line; the machine formats, the JUnit
    file and the step summary are whole either way.
    """
    stream = out if out is not None else sys.stdout
    environ = os.environ if env is None else env
    if fmt == "text":
        color = use_color(stream, environ)
        stream.write(verdict_line(v, color) + "\n" if quiet else render_text(v, color))
    else:
        stream.write(render(v, fmt))
    stream.flush()
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(render_junit(v), encoding="utf-8")
    step_summary = environ.get("GITHUB_STEP_SUMMARY")
    if fmt == "github" and step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(v))


def _dur(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Progress of a `--wait` (or of one round, `deadline` None) on stderr: one live line on a
    terminal; in CI, plain lines only when something changed, plus a heartbeat so a quiet log
    still shows the wait is alive.

    "Changed" means a target became ready or not, or its failure class changed: a detail that
    moves with every probe (a p95, a count of samples) does not print a new line. READY is said
    only once the verdict is final: a ready gate still short of latency samples says so.
    """

    def __init__(self, deadline: float | None, stream: TextIO | None = None,
                 tty: bool | None = None, heartbeat: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.deadline, self.heartbeat = deadline, heartbeat
        self._key: object = None
        self._printed_at = -1e9
        self._live = False

    @staticmethod
    def status(v: Verdict, awaiting: Sequence[str] = ()) -> str:
        if v.ready and not awaiting:
            return summary(v)
        blocking = [t for t in v.targets if t.critical and not t.ready]
        ok = sum(t.ready for t in v.targets if t.critical)
        reasons = "; ".join(f"{t.name}: {cause(t)}" for t in blocking[:3])
        more = f" (+{len(blocking) - 3} more)" if len(blocking) > 3 else ""
        if awaiting:
            names = ", ".join(awaiting[:3]) + (f" (+{len(awaiting) - 3} more)"
                                               if len(awaiting) > 3 else "")
            reasons += ("; " if reasons else "") + f"waiting for latency samples: {names}"
        return f"{ok}/{ok + len(blocking)} critical ready; {reasons}{more}"

    def update(self, v: Verdict, elapsed: float, awaiting: Sequence[str] = ()) -> None:
        """Show `v`; `awaiting`: critical targets still short of latency samples."""
        status = self.status(v, awaiting)
        key = (v.ready, tuple(awaiting), tuple((t.name, t.ready, t.failure or t.state)
                                              for t in v.targets if t.critical))
        of = f"/{_dur(self.deadline)}" if self.deadline is not None else ""
        text = f"[{_dur(elapsed)}{of}] {status}"
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[K" + text[:width])
            self._live = True
        elif key != self._key or elapsed - self._printed_at >= self.heartbeat:
            self.stream.write(text + "\n")
            self._printed_at = elapsed
        self._key = key
        self.stream.flush()

    def close(self) -> None:
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False

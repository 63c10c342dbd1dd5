"""Reports: text leads with the cause, JUnit parses with the right counts, GitHub escaping."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from probe.readiness import TargetVerdict, Verdict
from probe.report import (
    Progress,
    emit,
    gh_data,
    gh_property,
    markdown_summary,
    render,
    render_junit,
    unwritable,
    use_color,
)


def tv(name: str, ready: bool, failure: str | None = None, detail: str = "",
       critical: bool = True, state: str = "", **kw: object) -> TargetVerdict:
    base: dict = dict(name=name, kind="http", critical=critical, ready=ready,
                      state=state or ("ready" if ready else "failing"), failure=failure,
                      detail=detail, status_code=None, close_code=None, version=None,
                      latency_ms={})
    base.update(kw)
    return TargetVerdict(**base)


NOT_READY = Verdict(ready=False, targets=[
    tv("backend-health", False, "http_status", "HTTP 503 (expected 200)", status_code=503),
    tv("chat-ws", True, latency_ms={"p50": 8.0, "p95": 12.0, "p99": 20.0}, version="abc"),
    tv("docs", False, "dns", "name docs.invalid did not resolve", critical=False),
    tv("agents", False, None, "pending: 1 of 2 consecutive successes", state="pending"),
])
READY = Verdict(ready=True, targets=[tv("backend-health", True, status_code=200)])


def test_text_is_one_line_per_target_cause_first_and_a_summary() -> None:
    lines = render(NOT_READY, "text").splitlines()
    assert lines[0] == "FAIL backend-health  http_status: HTTP 503 (expected 200)"
    assert lines[1] == "OK   chat-ws         ready (p95 12ms, version abc)"
    assert lines[2].startswith("WARN docs            dns: name docs.invalid did not resolve")
    assert lines[2].endswith("[non-critical]")
    assert lines[3].startswith("WAIT agents")
    assert lines[4] == ("NOT READY: 1/3 critical targets ready; waiting on "
                        "backend-health (http_status), agents (pending)")
    assert render(READY, "text").splitlines()[-1] == "READY: 1/1 critical targets ready"


def test_json_is_the_verdict_dict() -> None:
    data = json.loads(render(NOT_READY, "json"))
    assert data["ready"] is False
    first = data["targets"][0]
    assert (first["name"], first["failure"], first["status_code"]) == (
        "backend-health", "http_status", 503)
    assert Verdict.from_dict(data) == NOT_READY


def test_junit_parses_with_the_right_counts_and_messages() -> None:
    root = ET.fromstring(render_junit(NOT_READY))
    suite = root.find("testsuite")
    assert suite is not None
    for el in (root, suite):
        assert (el.get("tests"), el.get("failures"), el.get("errors"), el.get("skipped")) == (
            "4", "2", "0", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["backend-health", "chat-ws", "docs", "agents"]
    failure = cases["backend-health"].find("failure")
    assert failure is not None
    assert failure.get("message") == "HTTP 503 (expected 200)"
    assert failure.get("type") == "http_status"
    assert cases["chat-ws"].find("failure") is None
    assert cases["docs"].find("skipped") is not None
    pending = cases["agents"].find("failure")
    assert pending is not None and pending.get("type") == "pending"


def test_junit_survives_markup_and_control_characters_in_a_detail() -> None:
    nasty = 'body <html> & "quotes"\x00\x1b[31m\nsecond line'
    root = ET.fromstring(render_junit(Verdict(False, [tv("x", False, "assertion", nasty)])))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert message.startswith('body <html> & "quotes"')
    assert "\x00" not in message and "second line" in message


def test_github_escapes_percent_cr_lf_and_property_separators() -> None:
    assert gh_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert gh_property("a: b, c%\n") == "a%3A b%2C c%25%0A"
    v = Verdict(False, [tv("api", False, "assertion", "body 100% wrong\nexpected: ok, got: no")])
    out = render(v, "github").splitlines()
    assert out[0] == ("::error title=api%3A assertion::"
                      "assertion: body 100%25 wrong%0Aexpected: ok, got: no")
    assert all("\r" not in line for line in out)
    assert out[-1].startswith("::error title=staging not ready::NOT READY")
    assert render(READY, "github").splitlines()[-1].startswith("::notice title=staging ready::")
    warn = render(NOT_READY, "github")
    assert "::warning title=docs%3A dns::" in warn


def test_emit_writes_junit_and_appends_the_step_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    junit = tmp_path / "reports" / "probe.xml"
    out = io.StringIO()
    v = Verdict(False, [tv("a|b", False, "http_status", "HTTP 503 | down")])
    emit(v, "github", junit, out=out, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert out.getvalue().startswith("::error title=a|b%3A http_status::")
    text = summary.read_text()
    assert text.startswith("earlier step\n### :x: staging not ready")
    assert "| :x: | a\\|b | failing | http\\_status: HTTP 503 \\| down |" in text
    assert ET.parse(junit).getroot().get("failures") == "1"
    # other formats leave the step summary alone
    emit(READY, "text", None, out=io.StringIO(), env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert summary.read_text() == text


def test_progress_prints_plain_lines_only_on_change_or_heartbeat() -> None:
    stream = io.StringIO()
    p = Progress(600.0, stream=stream, tty=False, heartbeat=30.0)
    p.update(NOT_READY, 1.0)
    p.update(NOT_READY, 2.0)
    p.update(NOT_READY, 40.0)
    p.update(READY, 41.0)
    p.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[1s/10m00s] 1/3 critical ready; backend-health: http_status")
    assert lines[2] == "[41s/10m00s] READY: 1/1 critical targets ready"


def test_progress_on_a_terminal_is_one_live_line() -> None:
    stream = io.StringIO()
    p = Progress(60.0, stream=stream, tty=True)
    p.update(NOT_READY, 1.0)
    p.update(READY, 2.0)
    p.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 2 and text.endswith("\n") and text.count("\n") == 1


def test_step_summary_keeps_what_a_target_says_inert() -> None:
    """A detail quotes the target's body: in the step summary it must stay one plain cell, not
    HTML, a code span, a link, emphasis or a new row."""
    nasty = "got <img src=x onerror=alert(1)> `rm -rf` [click](http://evil) **b** | x\r\nrow2"
    md = markdown_summary(Verdict(False, [tv("api<b>", False, "assertion", nasty)]))
    row = next(line for line in md.splitlines() if "api" in line)
    assert "<" not in row and "&lt;img src=x onerror=alert\\(1\\)&gt;" in row
    assert "`" not in row.replace("\\`", "") and "\\[click\\]\\(http://evil\\)" in row
    assert "\\*\\*b\\*\\*" in row and "\\| x row2" in row
    assert row.count(" | ") == 4, "no cell break from the detail"
    assert "&lt;b&gt;" in row, "a target name is escaped too"


def test_quiet_text_is_the_verdict_line_only() -> None:
    out = io.StringIO()
    emit(NOT_READY, "text", out=out, env={}, quiet=True)
    assert out.getvalue() == ("NOT READY: 1/3 critical targets ready; waiting on "
                              "backend-health (http_status), agents (pending)\n")
    out = io.StringIO()
    emit(NOT_READY, "json", out=out, env={}, quiet=True)
    assert json.loads(out.getvalue())["ready"] is False, "-q leaves machine formats whole"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_unless_no_color() -> None:
    assert use_color(Terminal(), {}) and not use_color(io.StringIO(), {})
    assert not use_color(Terminal(), {"NO_COLOR": "1"})
    assert use_color(Terminal(), {"NO_COLOR": ""}), "no-color.org: only a non-empty value counts"
    out = Terminal()
    emit(NOT_READY, "text", out=out, env={})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("\x1b[31mFAIL\x1b[0m backend-health")
    assert lines[-1].startswith("\x1b[1;31mNOT READY")
    out = Terminal()
    emit(NOT_READY, "text", out=out, env={"NO_COLOR": "1"})
    assert "\x1b" not in out.getvalue()
    assert out.getvalue() == render(NOT_READY, "text")


def test_unwritable_names_the_reason_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    not_a_dir = f"{tmp_path / 'file'} is not a directory"
    assert unwritable(tmp_path / "file" / "sub" / "r.xml") == not_a_dir
    assert unwritable(tmp_path) == "is a directory"
    fresh = tmp_path / "reports" / "r.xml"
    assert unwritable(fresh) is None and not fresh.exists()


def test_progress_says_ready_only_once_the_latency_verdict_is_in() -> None:
    stream = io.StringIO()
    p = Progress(None, stream=stream, tty=False)
    p.update(READY, 1.0, awaiting=["backend-health"])
    p.update(READY, 2.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("[1s] 1/1 critical ready; waiting for latency samples: backend-health")
    assert lines[1] == "[2s] READY: 1/1 critical targets ready"


def test_progress_prints_no_line_per_changing_detail() -> None:
    """A latency breach's detail moves with every sample; the CI log gets a line per change of
    state or cause, not per sample."""
    stream = io.StringIO()
    p = Progress(600.0, stream=stream, tty=False)
    for i in range(10):
        v = Verdict(False, [tv("api", False, "latency", f"p95 {300 + i}ms over {i + 5} samples")])
        p.update(v, float(i))
    p.update(Verdict(False, [tv("api", False, "http_status", "HTTP 503")]), 11.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "latency: p95 300ms" in lines[0] and "http_status" in lines[1]

"""`probe validate` in the file's own words: each mistake once, at its place, with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import unnamed

from probe.cli import main as cli
from probe.config import Config, ConfigError, parse_config, parse_duration


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return unnamed(info.value.errors)


def test_a_bad_default_is_reported_once_at_defaults() -> None:
    got = errors("defaults: {timeout: banana}\ntargets:\n"
                 + "".join(f"  - {{name: t{i}, url: 'http://x/'}}\n" for i in range(4)))
    assert got == ["defaults.timeout: expected a duration such as 250ms, 5s or 2m, got 'banana'"]


def test_wrong_shapes_are_said_without_pydantic_wording() -> None:
    got = errors("targets:\n"
                 "  - {name: a, url: 'http://x/', expect: {status: 200}}\n"
                 "  - {name: b, url: 'http://x/', expect: 5}\n"
                 "  - {name: c, url: 'http://x/', success_threshold: many, critical: maybe}\n"
                 "  - {name: 'd e', url: 'http://x/', credential_in: cookie}\n")
    assert "targets[0].expect.status: expected a list of status codes, such as [200]" in got
    assert "targets[1].expect: expected a mapping (key: value), got a number" in got
    assert "targets[2].success_threshold: expected a whole number, got text" in got
    assert "targets[2].critical: expected true or false, got text" in got
    assert "targets[3].name: must be 1-100 characters: letters, digits and _ . : -" in got
    assert "targets[3].credential_in: expected 'header', 'query' or 'subprotocol'" in got
    assert not [e for e in got if "Input should" in e or "instance of" in e], got


def test_a_missing_variable_is_one_line_with_every_place() -> None:
    got = errors("targets:\n"
                 "  - {name: a, url: 'http://${HOST}/'}\n"
                 "  - {name: b, url: 'http://${HOST}/x', headers: {X: '${HOST}'}}\n")
    assert got == ["targets[0].url, targets[1].url, targets[1].headers.X: "
                   "environment variable HOST is not set"]


def test_variable_typos_are_flagged_and_double_dollar_is_a_literal() -> None:
    got = errors("targets:\n  - {name: a, url: 'http://${HOST:x.test}/$PATH_PART'}\n")
    assert got == [
        "targets[0].url: ${HOST:...} has no '-': write ${HOST:-x.test} for a default",
        "targets[0].url: $PATH_PART is not read from the environment: write ${PATH_PART} "
        "(or $$PATH_PART for a literal $PATH_PART)",
    ]
    config = parse_config("targets:\n  - {name: a, url: 'http://x/', headers: "
                          "{X: '$$NAME and $${NOT_A_VAR} and 5$ and \\$Y'}}\n", env={})
    assert config.targets[0].headers["X"] == "$NAME and ${NOT_A_VAR} and 5$ and \\$Y"


def test_a_bare_number_is_no_duration_in_a_file() -> None:
    got = errors("targets:\n  - {name: a, url: 'http://x/', latency: {p95: 400}}\n")
    assert got == ["targets[0].latency.p95: give a unit: 400 is 400ms or 400s? "
                   "(durations: 250ms, 5s, 2m, 1h30m)"]
    # code passes seconds: models built in Python still take numbers
    config = Config.model_validate({"targets": [{"name": "a", "url": "http://x/",
                                                 "interval": 2, "timeout": 1.5}]})
    assert (config.targets[0].interval, config.targets[0].timeout) == (2.0, 1.5)


@pytest.mark.parametrize(("text", "seconds"), [("1h30m", 5400.0), ("1m30s", 90.0),
                                                ("2m 15s", 135.0), ("1s500ms", 1.5)])
def test_compound_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    config = parse_config(f"defaults: {{interval: {text}, timeout: 1s}}\n"
                          "targets:\n  - {name: a, url: 'http://x/'}\n", env={})
    assert config.targets[0].interval == seconds


@pytest.mark.parametrize("bad", ["1h30", "h", "1x30m", "30m1"])
def test_broken_compound_durations_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_probe_validate_says_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets:\n  - {name: a, url: 'http://x/', timeout: 3, "
                    "expect: {status: 200}}\n", encoding="utf-8")
    assert cli(["validate", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "targets[0] (a).timeout: give a unit: 3 is 3ms or 3s?" in err
    assert "such as [200]" in err


def test_an_error_names_the_target_by_its_name_too() -> None:
    """`targets[1] (chat-ws).timeout`: found by the name a person gave it, not by counting."""
    with pytest.raises(ConfigError) as info:
        parse_config("targets:\n  - {name: api, url: 'http://x/'}\n  - {name: chat-ws, "
                     "url: 'ws://x/', timeout: soon, headers: {X: '${NOPE}'}}\n", env={})
    assert info.value.errors == [
        "targets[1] (chat-ws).headers.X: environment variable NOPE is not set"]
    with pytest.raises(ConfigError) as info:
        parse_config("targets:\n  - {name: api, url: 'http://x/'}\n"
                     "  - {name: chat-ws, url: 'ws://x/', timeout: soon}\n  - {url: 'http://y/'}\n",
                     env={})
    got = info.value.errors
    assert any(e.startswith("targets[1] (chat-ws).timeout: expected a duration") for e in got), got
    assert any(e.startswith("targets[2].name: ") for e in got), got  # no name to show

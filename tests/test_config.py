"""Config parsing: durations, ${VAR} expansion, inherited defaults, errors with their place."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import unnamed

from probe.config import ConfigError, Settings, load_config, parse_config, parse_duration

DESIGN_EXAMPLE = Path(__file__).resolve().parent / "configs" / "design_example.yaml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", "5x", "-1s", "0s", "", True, None])
def test_bad_durations_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def _errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return unnamed(info.value.errors)


def test_design_example_parses_with_inherited_defaults() -> None:
    config = parse_config(DESIGN_EXAMPLE.read_text(), env={"JWT_SECRET": "s", "OAUTH_SECRET": "o"})
    names = [t.name for t in config.targets]
    assert names == ["backend-health", "agents-stop", "chat-ws"]
    health, stop, ws = config.targets
    assert (health.interval, health.timeout, health.failure_threshold) == (10.0, 5.0, 3)
    assert health.expect.status == [200] and health.expect.json_ == {"status": "healthy"}
    assert health.latency is not None and health.latency.p95 == pytest.approx(0.1)
    assert stop.method == "POST" and stop.json_body == {"agent_id": "probe"}
    assert ws.kind == "websocket" and ws.messages[1].until is not None
    assert config.expect_version is None  # "${EXPECTED_VERSION:-}" with nothing set
    jwt = config.credentials["e2e-user"].jwt
    assert jwt is not None and jwt.secret is not None
    assert "s" not in repr(jwt.secret).replace("SecretStr", "")  # masked


def test_target_overrides_defaults() -> None:
    config = parse_config(
        "defaults: {interval: 30s, critical: false}\n"
        "targets:\n"
        "  - {name: a, url: 'http://127.0.0.1/'}\n"
        "  - {name: b, url: 'http://127.0.0.1/', interval: 2s, critical: true}\n",
        env={},
    )
    a, b = config.targets
    assert (a.interval, a.critical) == (30.0, False)
    assert (b.interval, b.critical) == (2.0, True)


def test_env_expansion_and_default() -> None:
    config = parse_config(
        "targets:\n  - name: a\n    url: 'http://${HOST}:${PORT:-8080}/health'\n",
        env={"HOST": "127.0.0.1"},
    )
    assert config.targets[0].url == "http://127.0.0.1:8080/health"


def test_missing_env_var_names_variable_and_place() -> None:
    errors = _errors("targets:\n  - name: a\n    url: 'http://x/'\n    headers: {X: '${NOPE}'}\n")
    assert errors == ["targets[0].headers.X: environment variable NOPE is not set"]


def test_every_error_is_reported_with_its_place() -> None:
    errors = _errors(
        "defaults: {interval: 5x}\n"
        "targets:\n"
        "  - name: a\n    url: 'ftp://x'\n    timout: 5s\n    expect: {status: [999]}\n"
    )
    assert "defaults.interval: expected a duration such as 250ms, 5s or 2m, got '5x'" in errors
    assert any(e.startswith("targets[0].url: URL scheme must be") for e in errors)
    assert "targets[0].timout: unknown key (check its spelling)" in errors
    assert "targets[0].expect.status: not an HTTP status code: [999]" in errors


def test_duplicate_names_and_unknown_credential() -> None:
    dup = _errors("targets:\n  - {name: a, url: 'http://x/'}\n  - {name: a, url: 'http://y/'}\n")
    assert dup == ["targets[1].name: duplicate target name 'a'"]
    cred = _errors("targets:\n  - {name: a, url: 'http://x/', credential: nope}\n")
    assert cred == ["targets[0].credential: unknown credential 'nope' (none defined)"]


def test_yaml_syntax_error_names_line() -> None:
    errors = _errors("targets:\n  - name: a\n   url: [\n")
    assert errors[0].startswith("line ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")


def test_settings_port_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_LISTEN", "127.0.0.1:9000")
    monkeypatch.delenv("PORT", raising=False)
    assert Settings().host_port == ("127.0.0.1", 9000)
    monkeypatch.setenv("PORT", "8080")
    assert Settings().host_port == ("127.0.0.1", 8080)


def test_gate_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_GATE_TOKEN", "tok-very-secret")
    settings = Settings()
    assert "tok-very-secret" not in repr(settings) and "tok-very-secret" not in str(settings)
    assert settings.gate_token is not None
    assert settings.gate_token.get_secret_value() == "tok-very-secret"


def test_builtin_timeout_clamps_to_short_interval_but_explicit_one_is_an_error() -> None:
    config = parse_config("targets:\n  - {name: a, url: 'http://x/', interval: 2s}\n", env={})
    assert config.targets[0].timeout == 2.0
    errors = _errors("targets:\n  - {name: a, url: 'http://x/', interval: 2s, timeout: 3s}\n")
    assert errors == ["targets[0]: timeout (3s) must not exceed interval (2s)"]

"""The YAML config file and the PROBE_* environment, as validated pydantic models.

Every model forbids unknown keys: a typo such as `timout:` must be an error, not a silently
ignored line. Errors are reported with their place in the file (`targets[1].expect.status`).

This module loads the file and holds the whole Config (defaults copied into targets, references
between targets and credentials) and the environment's Settings; a target's own shape is in
probe.config.target and latency blocks in probe.config.latency, each with one job. Every public
name of those is re-exported here, so `from probe.config import Target` keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from probe.config.base import FROM_TEXT, Duration, Strict, parse_duration
from probe.config.credentials import BearerSpec, CredentialSpec, JwtSpec, LoginSpec, OAuth2Spec
from probe.config.errors import expand, pydantic_errors, with_names
from probe.config.latency import MAX_TIMED_WINDOW, MAX_WINDOW, MEASURES, LatencyTarget, Measure
from probe.config.steps import scenario_errors
from probe.config.target import (
    MAX_FLOW_STEPS,
    NAME,
    WS_CLOSE_ALLOWANCE,
    Expect,
    FlowStep,
    Match,
    Step,
    Target,
    TargetDefaults,
    inherited,
)
from probe.redact import redact_urls

__all__ = [
    "MAX_FLOW_STEPS", "MAX_TIMED_WINDOW", "MAX_WINDOW", "MEASURES", "NAME", "WS_CLOSE_ALLOWANCE",
    "BearerSpec", "Config", "ConfigError", "CredentialSpec", "Duration", "Expect", "FlowStep",
    "History", "JwtSpec", "LatencyTarget", "LoginSpec", "Match", "Measure", "OAuth2Spec",
    "Settings", "Step", "Strict", "Target", "TargetDefaults", "load_config", "no_version_path",
    "parse_config", "parse_duration",
]


class History(Strict):
    """How much recent history the status page keeps per target (whichever is smaller)."""

    results: int = Field(default=1000, ge=1, le=100_000)
    span: Duration = 3600.0



class Config(Strict):
    defaults: TargetDefaults = Field(default_factory=TargetDefaults)
    expect_version: str | None = None
    credentials: dict[str, CredentialSpec] = Field(default_factory=dict)
    targets: list[Target] = Field(min_length=1)
    concurrency: int = Field(default=256, ge=1, le=100_000)  # probes in flight at once
    history: History = Field(default_factory=History)

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        """Copy `defaults:` into each target that does not set the key itself."""
        if not isinstance(data, dict):
            return data
        raw = data.get("defaults") or {}
        targets = data.get("targets")
        if not isinstance(raw, dict) or not isinstance(targets, list):
            return data
        try:  # an invalid defaults block is reported once, at defaults.*
            TargetDefaults.model_validate(raw)
        except ValidationError:
            return data
        merged = [{**inherited(raw, t), **t} if isinstance(t, dict) else t for t in targets]
        return {**data, "targets": merged}

    @field_validator("expect_version", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v  # `${X:-}`: no expectation

    @model_validator(mode="after")
    def _references(self) -> Config:
        seen: set[str] = set()
        for i, t in enumerate(self.targets):
            if t.name in seen:
                raise ValueError(f"targets[{i}].name: duplicate target name {t.name!r}")
            seen.add(t.name)
            uses = [(f"targets[{i}]", t.credential)] + [
                (f"targets[{i}].steps[{k}]", s.credential) for k, s in enumerate(t.steps)]
            for where, credential in uses:
                if credential is not None and credential not in self.credentials:
                    known = ", ".join(sorted(self.credentials)) or "none defined"
                    raise ValueError(
                        f"{where}.credential: unknown credential {credential!r} ({known})")
            errors = scenario_errors(i, t, MEASURES)
            if errors:
                raise ValueError(errors[0])
        if self.expect_version is not None and not any(
                t.version_path or any(s.version_path for s in t.steps) for t in self.targets):
            raise ValueError(no_version_path(self.expect_version))
        return self


def no_version_path(expected: str) -> str:
    """Why an expected version that no target can check is an error, not a silent pass."""
    return (f"expect_version is {expected!r} but no target has a version_path, so no version "
            "would be checked; set version_path on the target that reports the build")


# --- loading ---------------------------------------------------------------------------------


class ConfigError(Exception):
    """A config file that cannot be used; `errors` are lines of `place: message`."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = [redact_urls(e) for e in errors]  # no URL password or query value shown
        errors = self.errors
        super().__init__(f"{source}: " + "; ".join(errors))


def parse_config(text: str, source: str = "<config>", env: dict[str, str] | None = None) -> Config:
    """Parse YAML text into a Config, or raise ConfigError listing every problem and its place."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, [f"{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping with a targets list"])
    data, errors = expand(data, dict(os.environ) if env is None else env)
    if errors:
        raise ConfigError(source, with_names(errors, data))
    try:  # FROM_TEXT: a bare number is no duration in a file (`p95: 400`: 400 what?)
        return Config.model_validate(data, context=FROM_TEXT)
    except ValidationError as exc:
        raise ConfigError(source, with_names(pydantic_errors(exc), data)) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    return parse_config(text, str(path), env)


# --- environment -----------------------------------------------------------------------------


class Settings(BaseSettings):
    """PROBE_* environment settings; PORT (set by Cloud Run) wins over PROBE_LISTEN's port."""

    model_config = SettingsConfigDict(env_prefix="PROBE_", extra="ignore")

    config: Path = Path("config/example.yaml")
    listen: str = "0.0.0.0:9464"
    port: int | None = Field(default=None, validation_alias=AliasChoices("PORT"))
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    gate_token: SecretStr | None = None
    keepalive_timeout: float = Field(default=5.0, gt=0)  # the daemon's server: daemon/listener.py
    max_connections: int = Field(default=256, ge=8)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        if self.port is not None:
            return host, self.port
        try:
            return host, int(port)
        except ValueError:
            raise ValueError(f"PROBE_LISTEN must be HOST:PORT, got {self.listen!r}") from None

"""`probe validate`: every file of the invalid corpus is rejected (exit 2) naming its place.

Each file under configs/invalid/ starts with `# expect: PLACE`: one printed error line must
start with that place (`targets[1].expect.status`, `credentials.e2e.jwt`, `line 4`, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import unnamed

from probe.cli import main

HERE = Path(__file__).parent
INVALID = sorted((HERE / "configs" / "invalid").glob("*.yaml"))
VALID = sorted((HERE / "configs" / "valid").glob("*.yaml"))
ROOT = HERE.parent


def expected_place(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: PLACE'"
    return first.removeprefix("# expect: ").strip()


def test_the_corpus_is_big_enough() -> None:
    assert len(INVALID) >= 20
    assert len(VALID) >= 3


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_is_rejected_naming_its_place(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("STAGEPROBE_TEST_VARIABLE_THAT_IS_NEVER_SET", "STAGEPROBE_TEST_UNSET_HOST"):
        monkeypatch.delenv(var, raising=False)
    place = expected_place(path)
    assert main(["validate", "-c", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines[0].startswith(f"{path}: invalid configuration"), lines
    errors = unnamed([line.strip() for line in lines[1:]])
    assert any(e.startswith(f"{place}:") or e.startswith(f"{place},") for e in errors), (
        f"no error names {place!r}: {errors}")
    assert all(": " in e and len(e) > len(place) + 3 for e in errors)  # place: message
    assert "Traceback" not in out.err


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_passes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_all_errors_are_listed_not_just_the_first(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("targets:\n  - {name: a, url: 'ftp://x/', timout: 1s}\n"
                 "  - {name: b, url: 'http://x/', expect: {status: [0]}}\n")
    assert main(["validate", "-c", str(f)]) == 2
    err = capsys.readouterr().err
    for place in ("targets[0] (a).url", "targets[0] (a).timout", "targets[1] (b).expect.status"):
        assert f"  {place}:" in err


def test_secret_values_are_not_echoed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "secret.yaml"
    f.write_text("credentials:\n  c: {jwt: {secret: 'hunter2-hunter2', algorithm: RS256}}\n"
                 "targets:\n  - {name: a, url: 'http://x/', credential: c}\n")
    assert main(["validate", "-c", str(f)]) == 2
    err = capsys.readouterr().err
    assert "credentials.c.jwt" in err and "hunter2" not in err


@pytest.mark.parametrize("name", ["example.yaml", "staging.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    env = {**os.environ, "STAGING_HOST": "api.staging.example.com", "JWT_SECRET": "s" * 32,
           "OAUTH_CLIENT_SECRET": "o", "E2E_PASSWORD": "p"}
    run = subprocess.run([sys.executable, "-m", "probe", "validate", "-c",
                          str(ROOT / "config" / name)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert "OK" in run.stdout


def test_staging_without_its_env_names_each_missing_variable() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STAGING_HOST", "JWT_SECRET", "OAUTH_CLIENT_SECRET", "E2E_PASSWORD")}
    run = subprocess.run([sys.executable, "-m", "probe", "validate", "-c",
                          str(ROOT / "config" / "staging.yaml")], capture_output=True, text=True,
                         timeout=60, env=env)
    assert run.returncode == 2
    for var in ("STAGING_HOST", "JWT_SECRET", "OAUTH_CLIENT_SECRET", "E2E_PASSWORD"):
        assert f"environment variable {var} is not set" in run.stderr

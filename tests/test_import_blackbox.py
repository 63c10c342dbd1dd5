"""`probe import-blackbox`: blackbox_exporter's module file (tests/configs/blackbox, after its
example.yml) and target lists into a stageprobe config that loads, says on stderr what it could
not map, never copies a secret, and probes a real loopback server as blackbox would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from helpers import run_cli, serving

from probe.config import load_config

FILES = Path(__file__).parent / "configs" / "blackbox"
MODULES = FILES / "blackbox.yml"
SECRETS = ("s3cr3t-t0ken-value", "mysecret-basic-pw")


async def convert(capsys: pytest.CaptureFixture[str], targets: Path, *extra: str
                  ) -> tuple[int, dict[str, Any], list[str], str]:
    code = await run_cli("import-blackbox", str(MODULES), "--targets", str(targets), *extra)
    out, err = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out and secret not in err
    return code, yaml.safe_load(out), err.splitlines(), out


async def test_the_module_file_converts_and_names_what_it_could_not_map(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, config, notes, text = await convert(capsys, FILES / "targets.txt")
    assert code == 1, "the tcp module's target was left out"
    by_name = {t["name"]: t for t in config["targets"]}
    assert list(by_name) == ["www.example.com", "www.example.com-download",
                             "api.example.com-v1-items", "login.example.com",
                             "static.example.com-app.js"]
    www = by_name["www.example.com"]
    assert www["follow_redirects"] is True and www["timeout"] == "5s"
    assert www["headers"] == {"Host": "vhost.example.com", "Accept-Language": "en-US",
                              "Authorization": "${BLACKBOX_HEADER_AUTHORIZATION}"}
    assert (www["tls_server_name"], www["tls_min_version"]) == ("vhost.example.com", "TLS12")
    assert (www["ip_protocol"], www["ip_protocol_fallback"]) == ("ip4", False)
    assert www["expect"] == {
        "http_versions": ["HTTP/1.1", "HTTP/2.0"], "tls": True,
        "body_regex": "Download the latest version here",
        "body_not_regex": ["Could not connect to database"],
        "headers": {"Access-Control-Allow-Origin": r".*(?:(\*|example\.com)).*"},
        "headers_not": {"Set-Cookie": ".*"},
    }
    post = by_name["api.example.com-v1-items"]
    assert (post["method"], post["body"], post["body_limit"]) == ("POST", "{}", 65536)
    assert post["interval"] == "15s", "a timeout over the default interval brings its interval"
    assert "&" not in text, "no YAML anchors: each target stands alone"
    expected = [
        "module http_2xx: http.headers.Authorization: value not copied,"
        " ${BLACKBOX_HEADER_AUTHORIZATION} instead",
        "module http_basic_auth_example: http.basic_auth: not mapped (a secret",
        "module http_gzip: http.compression: not mapped",
        "module tls_connect: prober tcp is not probed here",
    ]
    assert len(notes) == len(expected), notes
    for line, start in zip(notes, expected, strict=True):
        assert line.startswith(f"probe import-blackbox: {start}"), line
    written = tmp_path / "probe.yaml"
    written.write_text(text, encoding="utf-8")
    monkeypatch.setenv("BLACKBOX_HEADER_AUTHORIZATION", "Bearer from-the-environment")
    loaded = load_config(written)
    assert loaded.targets[0].expect.http_versions == ["1.1", "2"]
    assert loaded.targets[0].headers["Authorization"] == "Bearer from-the-environment"


async def test_file_sd_targets_take_their_module_from_labels(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, config, _, _ = await convert(capsys, FILES / "file_sd.yml")
    assert code == 0
    assert [(t["name"], "expect" in t) for t in config["targets"]] == [
        ("a.example.com-health", True), ("b.example.com-health", True),
        ("c.example.com", False)]


async def test_bare_urls_take_the_default_module_and_an_unknown_one_is_named(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("https://x.example.com/\nnope https://y.example.com/\n")
    code, config, notes, _ = await convert(capsys, targets, "--module", "http_gzip")
    assert code == 1
    assert [t["url"] for t in config["targets"]] == ["https://x.example.com/"]
    assert notes[-1] == ("probe import-blackbox: module nope: not in the module file;"
                         " its targets left out")


async def test_the_converted_config_probes_as_blackbox_would(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"X-Build": "v1.2.3-abc"})

    async def down(request: web.Request) -> web.Response:
        return web.Response(text="the database is down", headers={"X-Build": "v1.2.3-abc"})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/down", down)
    async with serving(app) as base:
        targets = tmp_path / "targets.txt"
        targets.write_text(f"loopback {base}/ok\nloopback {base}/down\n")
        code, _, _, text = await convert(capsys, targets)
        assert code == 0
        config = tmp_path / "probe.yaml"
        config.write_text(text, encoding="utf-8")
        await run_cli("check", "-c", str(config), "--format", "json")
    verdict = json.loads(capsys.readouterr().out)
    failures = {t["name"]: (t["failure"], t["detail"]) for t in verdict["targets"]}
    assert failures == {
        "127.0.0.1-ok": (None, ""),  # X-Build v1.2.3-abc: blackbox's regexp is found anywhere
        "127.0.0.1-down": ("assertion", 'body matches /database (is )?down/'
                                        ' (expect.body_not_regex): "database is down"'),
    }

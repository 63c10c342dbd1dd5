"""`probe init [PATH]`: write a starter config, so a new user starts from a file that validates.

The starter lives here, not in config/, because `probe init` must work from a plain
`pip install` where no repository files exist. It never overwrites a file (exit 2; --force to
replace it on purpose): a starter written over a real config would lose it. `-` prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probe.cli import EXIT_READY, UsageError

DEFAULT_PATH = Path("stageprobe.yaml")

STARTER = """\
# stageprobe config (written by `probe init`; see README.md for every field).
#   probe validate -c {path}     # every error names its place
#   probe check -c {path}        # probe once from here: ready, or why not (exit 0 / 1)
#   probe run -c {path}          # the daemon: /metrics, /readyz, /status on :9464
# ${{VAR}} is read from the environment (a missing one is an error); ${{VAR:-default}} has a
# default. Durations: 250ms, 5s, 2m.

defaults:
  interval: 10s            # between probes of a target
  timeout: 3s              # one probe's deadline (at most interval)
  success_threshold: 2     # consecutive successes to become ready
  failure_threshold: 3     # consecutive failures to become failing
  critical: true           # the gate is ready when every critical target is

# expect_version: ${{GIT_SHA}}   # ready only when targets with version_path serve this build

# credentials:
#   e2e-user:
#     jwt:
#       secret: "${{JWT_SECRET}}"
#       algorithm: HS256
#       ttl: 10m
#       claims: {{sub: staging-e2e-user, aud: staging}}

targets:
  - name: backend-health
    url: https://${{STAGING_HOST:-staging.example.com}}/health
    expect:
      status: [200]
    # version_path: version       # the JSON field of the answer that names the build
    # latency: {{p95: 300ms}}       # not ready while the p95 over recent probes is above this

  # - name: chat-ws
  #   url: wss://${{STAGING_HOST:-staging.example.com}}/ws
  #   credential: e2e-user
  #   messages:
  #     - send: {{type: ping}}
  #       expect: {{json: {{type: pong}}}}
  #       timeout: 2s
"""


def starter(path: Path | str = DEFAULT_PATH) -> str:
    return STARTER.format(path=path)


def main(args: argparse.Namespace) -> int:
    path: Path = args.path
    if str(path) == "-":
        sys.stdout.write(starter())
        return EXIT_READY
    if path.is_dir():
        raise UsageError(f"{path} is a directory; name the file, e.g. {path / DEFAULT_PATH}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w" if args.force else "x", encoding="utf-8") as fh:  # x: never replace
            fh.write(starter(path))
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting it (--force replaces it)") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    print(f"wrote {path}; next: probe validate -c {path}", file=sys.stderr)
    return EXIT_READY

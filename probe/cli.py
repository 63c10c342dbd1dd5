"""`probe run | check | gate | validate | demo`.

Exit codes: 0 ready / valid, 1 not ready, 2 usage or configuration error. Each subcommand lives
in its own module and is imported only when used, so `probe validate` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from probe import __version__
from probe.config import ConfigError, Settings, load_config, parse_duration

EXIT_READY, EXIT_NOT_READY, EXIT_USAGE = 0, 1, 2
FORMATS = ("text", "json", "junit", "github")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe", description="Probe a staging deployment.")
    p.add_argument("--version", action="version", version=f"stageprobe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: $PROBE_CONFIG or config/example.yaml)")

    run = sub.add_parser("run", help="the daemon: probe continually, serve /metrics and /readyz")
    config_arg(run)

    check = sub.add_parser("check", help="probe without a daemon and report readiness")
    config_arg(check)
    check.add_argument("--wait", type=_duration, default=None, metavar="DURATION",
                       help="keep probing until ready or this deadline (e.g. 10m)")
    check.add_argument("--expect-version", default=None, metavar="V",
                       help="ready only when targets with version_path serve this version")
    check.add_argument("--format", choices=FORMATS, default="text")
    check.add_argument("--junit", type=Path, default=None, metavar="PATH",
                       help="also write a JUnit XML report here")

    gate = sub.add_parser("gate", help="ask a running daemon (or Prometheus) if staging is ready")
    gate.add_argument("url", nargs="?", default=None, help="the daemon's base URL or /readyz URL")
    gate.add_argument("--prometheus", default=None, metavar="URL",
                      help="a Prometheus-compatible query API to evaluate readiness from")
    gate.add_argument("--wait", type=_duration, default=None, metavar="DURATION")
    gate.add_argument("--format", choices=FORMATS, default="text")
    gate.add_argument("--junit", type=Path, default=None, metavar="PATH")
    gate.add_argument("--token-env", default="PROBE_GATE_TOKEN", metavar="VAR",
                      help="environment variable holding the daemon's gate token")
    gate.add_argument("-c", "--config", type=Path, default=None, metavar="FILE",
                      help="with --prometheus: the daemons' config; each critical target "
                           "needs a fresh ready series")
    gate.add_argument("--selector", default="", metavar="'{LABEL=\"V\",...}'",
                      help="with --prometheus: label matchers added to every query")
    gate.add_argument("--max-age", type=_duration, default=60.0, metavar="DURATION",
                      help="with --prometheus: older samples do not count (default 1m, "
                           "~3 scrape intervals)")

    validate = sub.add_parser("validate", help="check a config file; every error names its place")
    config_arg(validate)

    demo = sub.add_parser("demo", help="start the twin and the daemon on loopback")
    demo.add_argument("--port", type=int, default=9464, help="the daemon's port (0: any free port)")
    demo.add_argument("--twin-port", type=int, default=0, help="the twin's port (0: any free port)")
    return p


def config_path(arg: Path | None) -> Path:
    return arg if arg is not None else Settings().config


def print_config_errors(err: ConfigError) -> None:
    print(f"{err.source}: invalid configuration ({len(err.errors)} error"
          f"{'s' if len(err.errors) != 1 else ''})", file=sys.stderr)
    for line in err.errors:
        print(f"  {line}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as err:
        print_config_errors(err)
        return EXIT_USAGE
    kinds = sorted({t.kind for t in config.targets})
    print(f"{path}: OK, {len(config.targets)} target(s) ({', '.join(kinds)}), "
          f"{len(config.credentials)} credential(s)")
    return EXIT_READY


_COMMANDS = {
    "run": "probe.daemon",
    "check": "probe.checkcmd",
    "gate": "probe.gate",
    "gate --prometheus": "probe.gate_prometheus",
    "demo": "probe.demo",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args)
    command = args.command
    if command == "gate" and args.prometheus is not None:
        command = "gate --prometheus"
    module = import_module(_COMMANDS[command])
    try:
        return int(module.main(args))
    except ConfigError as err:
        print_config_errors(err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_NOT_READY


if __name__ == "__main__":
    raise SystemExit(main())

"""`probe run | check | gate | validate | demo | reload | init | import-blackbox`.

Exit codes: 0 ready / valid, 1 not ready, 2 usage or configuration error. Each subcommand lives
in its own module and is imported only when used, so `probe validate` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from probe import __version__, clihelp
from probe.config import ConfigError, Settings, load_config, parse_duration

EXIT_READY, EXIT_NOT_READY, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
FORMATS = ("text", "json", "junit", "github")


class UsageError(Exception):
    """A mistake in how a command was called (exit 2): said at once, before or instead of
    probing, because waiting cannot fix it (a wrong URL, a wrong token, an unknown target)."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_FORMAT = argparse.RawDescriptionHelpFormatter  # the epilogs are laid out by hand


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe", description="Probe a staging deployment.",
                                epilog=clihelp.MAIN, formatter_class=_FORMAT)
    p.add_argument("--version", action="version", version=f"stageprobe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: $PROBE_CONFIG or config/example.yaml)")

    def judging_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", action="append", default=[], metavar="NAME",
                        help="judge only this target (repeatable); an unknown name exits 2")
        sp.add_argument("--exclude", action="append", default=[], metavar="NAME",
                        help="leave this target out (repeatable); an unknown name exits 2")
        talk = sp.add_mutually_exclusive_group()
        talk.add_argument("-q", "--quiet", action="store_true",
                          help="print only the verdict line (text format), no progress")
        talk.add_argument("-v", "--verbose", action="store_true",
                          help="on stderr, one line per probe (check) or per poll (gate)")

    run = sub.add_parser("run", help="the daemon: probe continually, serve /metrics and /readyz",
                         epilog=clihelp.RUN, formatter_class=_FORMAT)
    config_arg(run)

    check = sub.add_parser("check", help="probe without a daemon and report readiness",
                           epilog=clihelp.CHECK, formatter_class=_FORMAT)
    config_arg(check)
    check.add_argument("--wait", "--timeout", dest="wait", type=_duration, default=None,
                       metavar="DURATION",
                       help="keep probing until ready or this deadline (e.g. 10m); "
                            "without it, one round that decides each target")
    check.add_argument("--expect-version", default=None, metavar="V",
                       help="ready only when targets with version_path serve this version")
    check.add_argument("--format", choices=FORMATS, default="text",
                       help="stdout: text (default), json, junit, or github (annotations, "
                            "and a summary appended to $GITHUB_STEP_SUMMARY when set)")
    check.add_argument("--junit", type=Path, default=None, metavar="PATH",
                       help="also write a JUnit XML report here (checked before probing)")
    judging_args(check)

    gate = sub.add_parser("gate", help="ask a running daemon (or Prometheus) if staging is ready",
                          epilog=clihelp.GATE, formatter_class=_FORMAT)
    gate.add_argument("url", nargs="?", default=None, help="the daemon's base URL or /readyz URL")
    gate.add_argument("--prometheus", default=None, metavar="URL",
                      help="a Prometheus-compatible query API to evaluate readiness from")
    gate.add_argument("--wait", "--timeout", dest="wait", type=_duration, default=None,
                      metavar="DURATION", help="poll until ready or this deadline (e.g. 10m)")
    gate.add_argument("--format", choices=FORMATS, default="text",
                      help="as for probe check: text, json, junit or github")
    gate.add_argument("--junit", type=Path, default=None, metavar="PATH",
                      help="also write a JUnit XML report here (checked before asking)")
    judging_args(gate)
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

    reload = sub.add_parser("reload", help="make a running daemon re-read its config file")
    reload.add_argument("url", nargs="?", default=None,
                        help="the daemon's base URL (default: this container's, on 127.0.0.1)")
    reload.add_argument("--pid", type=int, default=None,
                        help="send SIGHUP to this local process instead of POST /-/reload")
    reload.add_argument("--token-env", default="PROBE_GATE_TOKEN", metavar="VAR",
                        help="environment variable holding the daemon's gate token")

    validate = sub.add_parser("validate", help="check a config file; every error names its place",
                              epilog=clihelp.VALIDATE, formatter_class=_FORMAT)
    config_arg(validate)

    init = sub.add_parser("init", help="write a starter config file",
                          epilog=clihelp.INIT, formatter_class=_FORMAT)
    init.add_argument("path", nargs="?", type=Path, default=Path("stageprobe.yaml"),
                      help="where to write it (default: stageprobe.yaml; -: print it)")
    init.add_argument("--force", action="store_true", help="replace an existing file")

    imp = sub.add_parser("import-blackbox", help="a config from blackbox_exporter modules and "
                         "targets (stdout); what cannot be mapped goes to stderr")
    imp.add_argument("modules", type=Path, help="blackbox_exporter's module file (blackbox.yml)")
    imp.add_argument("--targets", type=Path, required=True, metavar="FILE",
                     help="one target a line (URL, or MODULE URL), or a Prometheus file_sd file")
    imp.add_argument("--module", default=None, metavar="NAME",
                     help="the module of targets that name none")

    demo = sub.add_parser("demo", help="start the twin and the daemon on loopback")
    demo.add_argument("--host", default=os.environ.get("PROBE_DEMO_HOST") or "127.0.0.1",
                      help="the daemon's address (default: $PROBE_DEMO_HOST or 127.0.0.1; "
                           "0.0.0.0 in a container, so a published port reaches it)")
    demo.add_argument("--port", type=int, default=None, help="the daemon's port "
                      "(default: $PORT or 9464; 0: any free port)")
    demo.add_argument("--twin-port", type=int, default=0, help="the twin's port (0: any free port)")
    return p


def config_path(arg: Path | None) -> Path:
    """-c FILE, else $PROBE_CONFIG, else config/example.yaml; UsageError saying how to pass one
    when that default does not exist (a fresh checkout elsewhere, or a pip install)."""
    if arg is not None:
        return arg
    path = Settings().config
    if not path.exists():
        where = ("$PROBE_CONFIG" if os.environ.get("PROBE_CONFIG")
                 else "the default, config/example.yaml,")
        raise UsageError(f"no config file: {where} is not at {path}; pass one with -c FILE "
                         "or PROBE_CONFIG=FILE (`probe init FILE` writes a starter)")
    return path


def _preflight(args: argparse.Namespace) -> None:
    """Usage errors that can be found before any probing, so they fail in a second."""
    from probe.report import unwritable

    junit = getattr(args, "junit", None)
    if junit is not None and (why := unwritable(junit)):
        raise UsageError(f"--junit {junit}: cannot write the report there: {why}")
    if args.command in ("run", "check"):
        args.config = config_path(args.config)


def print_config_errors(err: ConfigError) -> None:
    print(f"{err.source}: invalid configuration ({len(err.errors)} error"
          f"{'s' if len(err.errors) != 1 else ''})", file=sys.stderr)
    for line in err.errors:
        print(f"  {line}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    try:
        path = config_path(args.config)
    except UsageError as exc:
        print(f"probe validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    "run": "probe.daemon.run",
    "check": "probe.checkcmd",
    "gate": "probe.gate",
    "gate --prometheus": "probe.gate.prometheus",
    "demo": "probe.demo",
    "init": "probe.initcmd",
    "reload": "probe.reloadcmd",
    "import-blackbox": "probe.import_blackbox",
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
        _preflight(args)
        return int(module.main(args))
    except ConfigError as err:
        print_config_errors(err)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"probe {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"probe {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())

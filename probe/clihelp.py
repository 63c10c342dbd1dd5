"""The words of `probe --help` and each subcommand's help: environment, signals and exit codes.

Here, not in cli.py, so the parser stays readable; tests/test_cli.py checks that every PROBE_*
variable the code reads is named here and that the README says the same exit codes.
"""

from __future__ import annotations

EXIT_CODES = """\
exit codes:
  0    ready (check, gate) / valid (validate) / done (init, reload)
  1    not ready: each cause is printed, one line per target
  2    usage or configuration error, said at once (a bad flag or config, an unknown --target,
       a --junit path that cannot be written, a gate URL answering 404, a missing or wrong
       gate token)
  130  interrupted (Ctrl-C / SIGINT)"""

ENVIRONMENT = """\
environment:
  PROBE_CONFIG            config file when -c is not given (default: config/example.yaml)
  PROBE_LISTEN            run: HOST:PORT to serve on (default 0.0.0.0:9464)
  PORT                    run: the port, winning over PROBE_LISTEN's (Cloud Run sets it)
  PROBE_GATE_TOKEN        run: the bearer token /readyz details and /api/v1/status need;
                          gate: the token sent (--token-env VAR names another variable)
  PROBE_PROMETHEUS_TOKEN  gate --prometheus: bearer token for the query API
  PROBE_LOG_FORMAT        json | console (default: console on a terminal, else json)
  PROBE_LOG_LEVEL         run: debug | info | warning | error (default info)
  PROBE_KEEPALIVE_TIMEOUT run: seconds an idle client connection is kept (default 5)
  PROBE_MAX_CONNECTIONS   run: client connections served at once (default 256)
  PROBE_SHARD             run: INDEX/COUNT, this replica's share of the targets
  PROBE_SHARD_REPLICAS    run: replicas per shard, for probe_shard_info
  PROBE_DEMO_HOST         demo: the daemon's address (default 127.0.0.1)
  NO_COLOR                any value: no colour in reports and logs
  GITHUB_STEP_SUMMARY     with --format github: a Markdown summary is appended to this file"""

SIGNALS = """\
signals:
  SIGTERM  run: drain (/readyz answers 503 draining), exit 0 within 5 s
  SIGHUP   run: re-read the config (an invalid file is logged; the running one stays)
  SIGINT   check, gate: stop at once, exit 130 (run: as SIGTERM)"""

MAIN = (f"{ENVIRONMENT}\n\n{SIGNALS}\n\n{EXIT_CODES}\n\n"
        "See `probe COMMAND --help` for each command's options.")

CHECK = f"""\
Without --wait: one round that decides each target (ready or failing), then the verdict.
With --wait D: probe until ready or D has passed, progress on stderr.
A config's ${{VAR}} references are read from the environment.

{EXIT_CODES}"""

GATE = f"""\
Asks a running daemon's /readyz (with $PROBE_GATE_TOKEN, or --token-env VAR, as the bearer
token) or, with --prometheus, a Prometheus query API (with $PROBE_PROMETHEUS_TOKEN).
An unreachable daemon is "not ready yet" while waiting; a wrong URL or token is exit 2 at once.

{EXIT_CODES}"""

RUN = f"""\
Serves /metrics, /livez, /readyz, /api/v1/status and /status on $PROBE_LISTEN.

{ENVIRONMENT}

{SIGNALS}

exit codes: 0 stopped (SIGTERM, SIGINT), 2 configuration error or cannot listen"""

VALIDATE = """\
exit codes: 0 valid, 2 invalid (every error is printed with its place, e.g. targets[2].timeout)"""

INIT = """\
Writes a starter config (never over an existing file: exit 2, unless --force); `-` prints it.
exit codes: 0 written, 2 the file exists or cannot be written"""

"""The daemon behind `probe run`: probe/daemon/run.py (the Daemon, signals, `main`), the scheduler
of probes, the HTTP server and its guarded listener, config reload, the state log and history.

This __init__ imports nothing on purpose: probe.readiness needs probe.daemon.reload and
`probe check` needs the scheduler and state log, and importing either submodule runs this file
first; were the Daemon re-exported here, that would load the whole daemon (and import
probe.readiness back while it is still initialising). Import from the submodules.
"""

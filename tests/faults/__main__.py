"""`python -m faults FAULT...` (with tests/ on sys.path): serve faults from a child process.

Prints one JSON line `{"FAULT": port, ...}` once every server listens, then serves until its
standard input closes (the parent exiting closes it too), so a soak measures the prober alone.
"""

from __future__ import annotations

import json
import sys

from .server import FaultServer


def main(argv: list[str]) -> int:
    servers = [FaultServer(f).start() for f in argv]
    print(json.dumps({s.fault: s.port for s in servers}), flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    for s in servers:
        s.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

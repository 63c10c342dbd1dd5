"""The fuzz tests (tests/test_fuzz_http.py, tests/test_fuzz_ws.py) with many more examples.

    python bench/fuzz_long.py                  # 3000 examples per test (~15-25 min)
    python bench/fuzz_long.py --examples 500

CI runs FUZZ_EXAMPLES=60 per test (tests/fuzzing.py, under ~30 s for both); this is the long
run of the same properties: every generated answer ends within the probe's timeout + 10 %, is
named from the failure vocabulary, leaks no configured secret, and leaves no task, descriptor
or buffer behind. Hypothesis prints the smallest failing answer it found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=3000, help="per test")
    p.add_argument("tests", nargs="*", default=["tests/test_fuzz_http.py",
                                                "tests/test_fuzz_ws.py"])
    args = p.parse_args()
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
           "-o", "timeout=0", *args.tests]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""When does a served build satisfy an expected one: exactly, or as the same git commit.

CI passes the full 40-character `$GIT_SHA`; backends often report the short form (`9aca97a`) or
the reverse. Both sides hexadecimal and the shorter at least 7 characters (git's own shortest
abbreviation) count as one commit when one is a prefix of the other; anything else must match
exactly, so `1.2` never satisfies `1.2.3`. Its own module because both the HTTP check (which
fails a probe on a wrong build) and readiness (which judges the last version seen) ask it.
"""

from __future__ import annotations

import re

MIN_SHA = 7  # characters: git's shortest abbreviation of a commit
_HEX = re.compile(r"[0-9a-fA-F]+")


def version_matches(expected: str, served: str | None) -> bool:
    """Does the build `served` satisfy `expected`?"""
    if served is None:
        return False
    if served == expected:
        return True
    short, long = sorted((expected, served), key=len)
    return (len(short) >= MIN_SHA and _HEX.fullmatch(short) is not None
            and _HEX.fullmatch(long) is not None and long.lower().startswith(short.lower()))

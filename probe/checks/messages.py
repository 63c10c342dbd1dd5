"""Matching WebSocket messages against a step's `expect` / `until`, and encoding what a step sends.

Pure functions, so the rules are tested without a socket. The rules are the HTTP check's
(`_http_expect`): dotted paths that index lists, values compared as JSON (`1` equals `1.0`, but
`true` is not `1` and `{"a": 1}` is not `{"a": true}`), and an expected value normalised the way
JSON would carry it (a YAML date is its ISO text). A mismatch is explained in one line, expected
vs actual, short enough for a detail.

A step's match is compiled once (its regex, split paths, normalised values, their wording) and
reused for every message of every probe while that Match object lives; a reload builds new ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from probe.checks import PerObject, clip, keep, recall
from probe.checks._http_expect import MISSING, as_json, resolve, same
from probe.config import Match


@dataclass(frozen=True, slots=True)
class _Expected:
    path: str
    keys: tuple[str, ...]
    value: Any  # as JSON would carry it
    shown: str  # how a detail writes it


@dataclass(frozen=True, slots=True)
class _Compiled:
    regex: re.Pattern[str] | None
    expected: tuple[_Expected, ...]


_COMPILED: PerObject[_Compiled] = {}


def _compiled(match: Match) -> _Compiled:
    return recall(_COMPILED, match) or keep(_COMPILED, match, _compile(match))


def _compile(match: Match) -> _Compiled:
    expected = []
    for path, want in match.json_.items():
        value = as_json(want)
        expected.append(_Expected(path, tuple(path.split(".")), value, json.dumps(value)))
    return _Compiled(
        re.compile(match.regex) if match.regex is not None else None, tuple(expected)
    )


def _shown(text: str) -> str:
    """The start of a message, as a detail quotes it: clip() cleans all it is given, so it is
    given only the start (a 10 MiB message took ~0.1 s of the loop to clip whole)."""
    return repr(clip(text[:_SHOWN]))


_SHOWN = 200  # characters of a message looked at for a detail


def mismatch(match: Match, message: str | bytes) -> str | None:
    """None when `message` satisfies `match`, else why not."""
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    compiled = _compiled(match)
    if compiled.regex is not None and not compiled.regex.search(text):
        return f"expected a message matching /{match.regex}/, got {_shown(text)}"
    if compiled.expected:
        try:
            doc = json.loads(text)
        except RecursionError:  # a hostile `[[[[...` message: not a bug of ours
            return f"expected a JSON message, got one nested too deeply to parse: {_shown(text)}"
        except ValueError:
            return f"expected a JSON message, got {_shown(text)}"
        for want in compiled.expected:
            got = resolve(doc, want.keys)
            if got is MISSING:
                return f"expected {want.path} = {want.shown}, but {want.path} is missing"
            if not same(want.value, got):
                shown = clip(json.dumps(got, default=str), 60)
                return f"expected {want.path} = {want.shown}, got {shown}"
    return None


def payload(send: Any) -> str:
    """What a step sends: a string as a text frame, anything else as compact JSON text (a YAML
    date as its ISO text, as in an expected value)."""
    if isinstance(send, str):
        return send
    return json.dumps(send, separators=(",", ":"), default=str)

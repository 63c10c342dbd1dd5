"""Matching WebSocket messages against a step's `expect` / `until`, and encoding what a step sends.

Pure functions, so the rules (dotted paths, list indices, bool vs number) are tested without a
socket. A mismatch is explained in one line, expected vs actual, short enough for a detail.
"""

from __future__ import annotations

import json
import re
from typing import Any

from probe.config import Match

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def oneline(text: str, limit: int = 80) -> str:
    """`text` on one line, cut to `limit` characters (for a failure detail)."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dig(doc: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (`data.items.0.id`) through objects and lists: (found, value)."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part):
            index = int(part)
            if not -len(node) <= index < len(node):
                return False, None
            node = node[index]
        else:
            return False, None
    return True, node


def same(want: Any, got: Any) -> bool:
    """Equality as a YAML author means it: 1 == 1.0, but `true` never equals the number 1."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(want) is type(got) and want == got
    return bool(want == got)


def mismatch(match: Match, message: str | bytes) -> str | None:
    """None when `message` satisfies `match`, else why not."""
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    if match.regex is not None and not re.search(match.regex, text):
        return f"expected a message matching /{match.regex}/, got {oneline(text)!r}"
    if match.json_:
        try:
            doc = json.loads(text)
        except ValueError:
            return f"expected a JSON message, got {oneline(text)!r}"
        for path, want in match.json_.items():
            found, got = dig(doc, path)
            if not found:
                return f"expected {path} = {json.dumps(want)}, but {path} is missing"
            if not same(want, got):
                shown = oneline(json.dumps(got, default=str), 60)
                return f"expected {path} = {json.dumps(want)}, got {shown}"
    return None


def payload(send: Any) -> str:
    """What a step sends: a string as a text frame, anything else as compact JSON text."""
    return send if isinstance(send, str) else json.dumps(send, separators=(",", ":"))

"""Secret values, every form they take on the wire, and the one way every output masks them.

Why one module: a secret reaches an output by many roads (a server echoing a header into a body,
a close reason, a token endpoint's error, a traceback, a config error naming a URL), and each
road must mask the same values in the same forms. This module imports nothing of probe's, so the
checks, the credentials, the logging setup and the config loader can all use it without a cycle.

What counts as a form of a secret `s` (see `forms`): `s` itself, URL-encoded (quote with and
without `/` kept, quote_plus), base64 (standard and URL-safe, padded or not). What is masked
(see `Secrets.mask`): every whole form, and any run of text where 8 or more consecutive
characters (WINDOW) of a form appear: a server that echoes only the first 8 characters of a
token, or a detail clipped in the middle of one, is masked too.

Values shorter than MIN_SECRET characters are not treated as secrets: `?page=1` or `?v=2` would
otherwise mask every `1` and `2` of every detail. The Basic value built from a short
`user:pw` is long and is masked.
"""

from __future__ import annotations

import base64
import re
import weakref
from collections.abc import Container, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MIN_SECRET = 6  # characters: shorter configured values are not secrets (see the docstring)
WINDOW = 8  # characters of a secret that, seen together, are masked
MASK = "***"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clip(text: str, limit: int = 80) -> str:
    """`text` on one line (control characters dropped, whitespace collapsed), at most `limit`
    characters: a detail is one line whatever the peer sent."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def forms(value: str) -> set[str]:
    """`value` in every encoding a request or an echo of it may carry."""
    raw = value.encode("utf-8", "surrogateescape")
    std, safe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    return {value, quote(value), quote(value, safe=""), quote_plus(value),
            std, std.rstrip("="), safe, safe.rstrip("=")}


class Secrets:
    """A fixed set of secret values, ready to mask in any text.

    Built once per target and token (the checks cache it), never per probe: building costs one
    set entry per WINDOW-long slice of every form; masking costs one set lookup per character of
    the text masked, whatever the number of secrets. Sets merge without recomputing forms."""

    __slots__ = ("__weakref__", "_grams", "_short", "_shorts", "values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(v for v in values if len(v) >= MIN_SECRET)
        every = set().union(*(forms(v) for v in self.values)) if self.values else set()
        self._grams = frozenset(
            f[i : i + WINDOW] for f in every if len(f) >= WINDOW for i in range(len(f) - WINDOW + 1)
        )
        self._shorts = frozenset(f for f in every if len(f) < WINDOW)
        self._short: re.Pattern[str] | None = None

    @classmethod
    def merge(cls, sets: Iterable[Secrets]) -> Secrets:
        """One set masking everything each of `sets` masks (their forms are not recomputed)."""
        sets = [s for s in sets if s.values]
        if len(sets) == 1:
            return sets[0]
        out = cls()
        if sets:
            out.values = frozenset().union(*(s.values for s in sets))
            out._grams = frozenset().union(*(s._grams for s in sets))
            out._shorts = frozenset().union(*(s._shorts for s in sets))
        return out

    def __bool__(self) -> bool:
        return bool(self.values)

    def mask(self, text: str) -> str:
        """`text` with every form of every secret, and every WINDOW-long piece of one, masked."""
        if self._shorts and self._short is None:
            self._short = _alternation(self._shorts)
        return _mask(text, self._grams, self._short)


def _alternation(shorts: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(shorts, key=len, reverse=True)  # the longest form first
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def _mask(text: str, grams: Container[str], short: re.Pattern[str] | None) -> str:
    """`text` with every run of WINDOW-long slices found in `grams`, and every match of `short`,
    replaced by MASK."""
    if grams and len(text) >= WINDOW:
        end, spans = -1, []
        for i in range(len(text) - WINDOW + 1):
            if text[i : i + WINDOW] in grams:
                if i <= end:  # overlaps (or touches) the run being masked: extend it
                    spans[-1][1] = i + WINDOW
                else:
                    spans.append([i, i + WINDOW])
                end = i + WINDOW
        if spans:
            out, at = [], 0
            for start, stop in spans:
                out += [text[at:start], MASK]
                at = stop
            out.append(text[at:])
            text = "".join(out)
    if short is not None:
        text = short.sub(MASK, text)
    return text


NONE = Secrets()


class Known:
    """Every secret set in use in this process, each for as long as its owner (a Target, a
    Credentials) lives: what the log processor masks in every line, as a last line of defence
    behind the checks' own scrubbing.

    The slices of all sets are counted, so a set coming or going costs its own size (a token
    rotating on 3000 targets must not rebuild a union of every target's secrets)."""

    def __init__(self) -> None:
        self._sets: dict[int, tuple[weakref.ref[Any], Secrets]] = {}
        self._grams: dict[str, int] = {}
        self._shorts: dict[str, int] = {}
        self._short: re.Pattern[str] | None = None
        self._short_stale = False

    def add(self, owner: object, secrets: Secrets) -> None:
        """Know `secrets` for `owner` (replacing what it had) until `owner` is collected."""
        key = id(owner)
        held = self._sets.get(key)
        if held is not None:
            if held[0]() is owner and held[1] is secrets:
                return
            self._count(held[1], -1)

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            held = self._sets.get(key)
            if held is not None and held[0] is ref:
                del self._sets[key]
                self._count(held[1], -1)

        self._sets[key] = (weakref.ref(owner, forget), secrets)
        self._count(secrets, 1)

    def _count(self, secrets: Secrets, step: int) -> None:
        for counts, pieces in ((self._grams, secrets._grams), (self._shorts, secrets._shorts)):
            for piece in pieces:
                left = counts.get(piece, 0) + step
                if left > 0:
                    counts[piece] = left
                else:
                    counts.pop(piece, None)
        if secrets._shorts:
            self._short_stale = True

    def mask(self, text: str) -> str:
        if self._short_stale:
            self._short, self._short_stale = _alternation(self._shorts), False
        return _mask(text, self._grams, self._short)


KNOWN = Known()

# scheme://[user[:password]@]host... up to whitespace or a quote: a URL inside a message.
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"<>]*)")


def _one_url(m: re.Match[str]) -> str:
    scheme, rest = m.group(1), m.group(2)
    rest, hash_, _ = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    if qmark:
        query = "&".join(
            f"{k}={MASK}" if eq else k for k, eq, _ in (p.partition("=") for p in query.split("&"))
        )
    return f"{scheme}{netloc}{slash}{path}{qmark}{query}{hash_ and '#' + MASK}"


def redact_urls(text: str) -> str:
    """`text` with every URL in it shown without secrets: the userinfo's password (or a lone
    userinfo, a token) and every query value and fragment replaced by MASK; scheme, host, port,
    path and query keys stay, so a config error still says which URL it means."""
    return _URL.sub(_one_url, text)

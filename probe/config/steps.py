"""Named steps and flows in the config: step names as latency measures, `extract:` and
`{{name}}` placeholders, checked once when the file loads and filled at probe time.

Kept apart from probe.config.target (which only declares the fields) and free of its imports, so the
flow check can fill placeholders with the same rules `probe validate` checked them by.

Why the checks are here and not per field: a `{{thread_id}}` is wrong only in relation to the
steps before it, and a `latency.measure: agent-start` only in relation to the target's step
names, so they run over a whole validated target and name the place in the file
(`targets[3].steps[1].url: {{thread_id}} is not extracted by an earlier step`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import quote

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_STEP_MEASURES = 20  # named steps per target: each is a histogram (a label value) in /metrics
MAX_EXTRACTS = 20  # values one step may extract
URL_SAFE = "-._~"  # what a value keeps unencoded when it is filled into a URL


class _Steppable(Protocol):
    name: str
    url: str
    headers: dict[str, str]
    json_body: Any
    body: str | None
    messages: list[Any]
    expect: Any


def check_extract(extract: dict[str, str]) -> dict[str, str]:
    """`extract: {name: json.PATH | header:NAME}`: a value name `{{name}}` can use, and where
    in the answer the value is."""
    if len(extract) > MAX_EXTRACTS:
        raise ValueError(f"a step extracts at most {MAX_EXTRACTS} values")
    for name, where in extract.items():
        if not VALUE_NAME.fullmatch(name):
            raise ValueError(f"extract {name!r}: a name is letters, digits and _ (not first a "
                             "digit), as {{name}} uses it")
        if not isinstance(where, str) or not (
                (where.startswith("json.") and len(where) > 5)
                or (where.startswith("header:") and where[7:].strip())):
            raise ValueError(f"extract {name}: expected json.PATH (a dotted path in the JSON "
                             "answer) or header:NAME")
    return extract


def measure_names(target: Any) -> list[str]:
    """The step names of `target` that are latency measures: its named WebSocket steps, and
    for a flow each step's name and the named WebSocket steps inside it."""
    names = [m.name for m in target.messages if m.name is not None]
    for step in target.steps:
        names.append(step.name)
        names += [m.name for m in step.messages if m.name is not None]
    return names


def scenario_errors(i: int, target: Any, builtins: tuple[str, ...]) -> list[str]:
    """Every error of a validated target's step names, latency measures and placeholders, each
    `place: message` with the place in the file."""
    here = f"targets[{i}]"
    errors: list[str] = []
    seen: set[str] = set()
    places: list[tuple[str, str]] = [
        (f"{here}.messages[{j}].name", m.name) for j, m in enumerate(target.messages)
        if m.name is not None]
    for k, step in enumerate(target.steps):
        places.append((f"{here}.steps[{k}].name", step.name))
        places += [(f"{here}.steps[{k}].messages[{j}].name", m.name)
                   for j, m in enumerate(step.messages) if m.name is not None]
    for where, name in places:
        if name in builtins:
            errors.append(f"{where}: {name!r} is a built-in latency measure "
                          f"({', '.join(builtins)}); name the step otherwise")
        elif name in seen:
            errors.append(f"{where}: step name {name!r} is used twice in target {target.name}")
        seen.add(name)
    if len(places) > MAX_STEP_MEASURES:
        errors.append(f"{here}: at most {MAX_STEP_MEASURES} named steps (each is a latency "
                      f"measure with its own histogram), got {len(places)}")
    for j, lat in enumerate(_blocks(target)):
        where = f"{here}.latency" + (f"[{j}]" if isinstance(target.latency, tuple) else "")
        allowed = ("total",) if target.kind == "flow" else builtins
        if lat.measure not in allowed and lat.measure not in seen:
            names = ", ".join(sorted(seen)) or "none"
            errors.append(f"{where}.measure: unknown measure {lat.measure!r}: one of "
                          f"{', '.join(allowed)} or a step name of this target ({names})")
    known: set[str] = set()
    for k, step in enumerate(target.steps):
        for where, name in step_placeholders(step):
            if name not in known:
                errors.append(f"{here}.steps[{k}].{where}: {{{{{name}}}}} is not extracted by "
                              "an earlier step")
        known |= set(getattr(step, "extract", {}))
    return errors


def _blocks(target: Any) -> tuple[Any, ...]:
    """The target's latency blocks: `latency:` is one block or a list of them."""
    lat = target.latency
    return () if lat is None else tuple(lat) if isinstance(lat, tuple | list) else (lat,)


def step_placeholders(step: _Steppable) -> Iterator[tuple[str, str]]:
    """(place within the step, name) of every `{{name}}` in what is filled at probe time."""
    yield from _found("url", step.url)
    for key, value in step.headers.items():
        yield from _found(f"headers.{key}", value)
    yield from _found("json_body", step.json_body)
    yield from _found("body", step.body)
    expect = step.expect
    yield from _found("expect.json", expect.json_)
    yield from _found("expect.body_regex", expect.body_regex)
    yield from _found("expect.headers", expect.headers)
    for j, m in enumerate(step.messages):
        yield from _found(f"messages[{j}].send", m.send)
        for wait in ("expect", "until"):
            match = getattr(m, wait)
            if match is not None:
                yield from _found(f"messages[{j}].{wait}.json", match.json_)
                yield from _found(f"messages[{j}].{wait}.regex", match.regex)


def _found(where: str, node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        for m in PLACEHOLDER.finditer(node):
            yield where, m.group(1)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _found(f"{where}.{key}", value)
    elif isinstance(node, list):
        for j, value in enumerate(node):
            yield from _found(f"{where}[{j}]", value)


def has_placeholder(node: Any) -> bool:
    return any(True for _ in _found("", node))


def fill(node: Any, values: Mapping[str, Any]) -> Any:
    """`node` with every `{{name}}` replaced by its value; a string that is one placeholder
    alone takes the value as extracted (a JSON number stays a number in a JSON body)."""
    if isinstance(node, str):
        whole = PLACEHOLDER.fullmatch(node)
        if whole is not None:
            value = values[whole.group(1)]
            return value if isinstance(value, int | float | bool) else text(value)
        return PLACEHOLDER.sub(lambda m: text(values[m.group(1)]), node)
    if isinstance(node, dict):
        return {k: fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, values) for v in node]
    return node


def fill_url(url: str, values: Mapping[str, Any]) -> str:
    """A URL with its placeholders filled, each value percent-encoded (an id with a `/` or
    `&` in it stays one path segment or query value)."""
    return PLACEHOLDER.sub(lambda m: quote(text(values[m.group(1)]), safe=URL_SAFE), url)


def fill_regex(pattern: str, values: Mapping[str, Any]) -> str:
    """A regex with its placeholders filled by the values' text, escaped: an id is matched as
    written (a `.` or `+` in it matches only itself). Only what is special outside a character
    class is escaped (re.escape also escapes `-`, which would split a UUID in a detail into
    fragments the secret masking no longer recognises)."""
    return PLACEHOLDER.sub(lambda m: _SPECIAL.sub(r"\\\g<0>", text(values[m.group(1)])),
                           pattern)


_SPECIAL = re.compile(r"[.^$*+?{}\[\]\\|()]")


def text(value: Any) -> str:
    """An extracted value as it is written into text: JSON's spelling for true/false/null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)

"""How a config file's mistakes are said: `${VAR}` expansion and the wording of every error.

Every error is one line, `place: message`, in the file's own terms: `expected a list such as
[200]`, not pydantic's "Input should be a valid list". A missing variable is one line listing
every place that uses it (the fix is one `export`, not five). `${VAR:default}` (no `-`) and
`$VAR` (no braces) are errors, not text kept as written: they are always a typo of `${VAR:-d}`
and `${VAR}`. `$$` before a name or `{` is a literal `$`. A value from the error's input is never
shown (it may be a secret), except the integer of `status: 200` in its hint.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

_REF = re.compile(
    r"\$\$(?=[A-Za-z_{])"                             # $$NAME, $${: a literal $
    r"|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}"  # ${VAR}, ${VAR:-default}
    r"|\$\{([A-Za-z_][A-Za-z0-9_]*):([^}]*)\}"        # ${VAR:default}: a typo
    r"|(?<!\\)\$([A-Za-z_][A-Za-z0-9_]*)"             # $VAR: a typo
)
SHOWN_PLACES = 5  # places listed for one missing variable; the rest are counted


def place(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def expand(data: Any, env: dict[str, str]) -> tuple[Any, list[str]]:
    """`data` with ${VAR} references replaced from `env`, and the errors found doing it."""
    missing: dict[str, list[str]] = {}
    errors: list[str] = []

    def walk(node: Any, loc: tuple[int | str, ...]) -> Any:
        if isinstance(node, str):
            return _REF.sub(lambda m: _one(m, loc), node)
        if isinstance(node, dict):
            return {k: walk(v, (*loc, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        return node

    def _one(m: re.Match[str], loc: tuple[int | str, ...]) -> str:
        name, default, typo, typo_default, bare = m.groups()
        if name is not None:
            if name in env:
                return env[name]
            if default is not None:
                return default
            missing.setdefault(name, []).append(place(loc))
        elif typo is not None:
            errors.append(f"{place(loc)}: ${{{typo}:...}} has no '-': write "
                          f"${{{typo}:-{typo_default}}} for a default")
        elif bare is not None:
            errors.append(f"{place(loc)}: ${bare} is not read from the environment: write "
                          f"${{{bare}}} (or $${bare} for a literal ${bare})")
        else:
            return "$"
        return ""

    out = walk(data, ())
    for name, places in missing.items():
        shown = ", ".join(places[:SHOWN_PLACES])
        more = f" (+{len(places) - SHOWN_PLACES} more)" if len(places) > SHOWN_PLACES else ""
        errors.append(f"{shown}{more}: environment variable {name} is not set")
    return out, errors


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "nothing" if value is None else type(value).__name__


def message(err: Any) -> str:
    """One pydantic error in the config file's words."""
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling)"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {_kind(given)}"
    if kind == "list_type":
        if loc and loc[-1] == "status" and isinstance(given, int) and not isinstance(given, bool):
            return f"expected a list of status codes, such as [{given}]"
        return f"expected a list, got {_kind(given)}"
    if kind == "string_type":
        return f"expected text, got {_kind(given)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_kind(given)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_kind(given)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_kind(given)}"
    if kind == "missing":
        return "required, but not given"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}"
    bounds = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
              "greater_than": ("more than", "gt"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return "must be 1-100 characters: letters, digits and _ . : -"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg.replace("Input should be", "expected")


_TARGET_PLACE = re.compile(r"\btargets\[(\d+)\](?! \()")


def with_names(lines: list[str], data: Any) -> list[str]:
    """Each `targets[N]` in `lines` followed by that target's name, `targets[3] (chat-ws)`, so
    an error in a long file is found by the name a person gave it, not by counting."""
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list):
        return lines

    def named(m: re.Match[str]) -> str:
        i = int(m.group(1))
        item = targets[i] if i < len(targets) else None
        name = item.get("name") if isinstance(item, dict) else None
        return f"{m.group(0)} ({name})" if isinstance(name, str) and name.strip() else m.group(0)

    return [_TARGET_PLACE.sub(named, line) for line in lines]


def pydantic_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=True):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        msg = message({**err, "loc": loc})
        if msg.startswith("targets[") and ": " in msg and not loc:  # cross-field check
            lines.append(msg)
        else:
            lines.append(f"{place(loc)}: {msg}")
    return lines

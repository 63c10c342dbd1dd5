"""Config types of the HTTP check's blackbox_exporter-parity keys (see README, "Coming from
blackbox_exporter"): what a module's `valid_http_versions`, `fail_if_*` and `tls_config` map to.

Kept out of probe/config/target.py so that module stays the targets' shape; these are the value
types.
"""

from __future__ import annotations

import re
import ssl
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

_VERSION = re.compile(r"(?:HTTP/)?(1\.0|1\.1|2(?:\.0)?|3(?:\.0)?)", re.IGNORECASE)


def _http_version(value: Any) -> Any:
    """`HTTP/1.1`, `1.1`, `HTTP/2.0`, `2`: one spelling (`1.1`, `2`), as the probe reports it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value:g}" if value != 1 else "1.0"
    if isinstance(value, str) and (m := _VERSION.fullmatch(value.strip())):
        return m.group(1).removesuffix(".0") if m.group(1)[0] in "23" else m.group(1)
    return value


HttpVersion = Annotated[Literal["1.0", "1.1", "2", "3"], BeforeValidator(_http_version)]

TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
# blackbox_exporter's (Go's) names -> Python's
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}


def one_or_more(value: Any) -> Any:
    """A single pattern is a list of one (`body_not_regex: "error"`)."""
    return [value] if isinstance(value, str) else value

"""A throwaway self-signed certificate for TLS tests, generated at test time (no key in git).

The certificate is its own issuer, so a client that does not trust it sees exactly the
`self-signed certificate` verification error, and a client given it as `ca_file` trusts it.
It is built by tests/faults/certs.py, the one module that makes test keys and certificates;
this name stays so that tests import it as `from certs import make_self_signed`.
"""

from __future__ import annotations

from faults.certs import SelfSigned, make_self_signed

__all__ = ["SelfSigned", "make_self_signed"]

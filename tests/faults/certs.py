"""Test certificates made at test time (no key in git): the one place tests and bench build keys
and X.509 certificates (tests/certs.py's self-signed certificate is built here too).

`make_certs`: a CA, and leaves that fail verification in one way each. Every leaf except the
self-signed one is issued by the same test CA, and targets trust that CA through `ca_file`, so
that what fails is exactly the fault under test (expiry, host) and not an unknown issuer.
`make_chain`: root -> intermediate -> leaf. `make_self_signed`: one certificate that is its own
CA, for servers whose clients trust that very certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def issue(
    subject: x509.Name,
    key: Key,
    issuer: x509.Name,
    issuer_key: Key,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    sans: Sequence[x509.GeneralName] = (),
    ca: bool = False,
    path_length: int | None = None,
    crl_sign: bool = True,
    server_auth: bool = False,
    key_ids: bool = False,
) -> x509.Certificate:
    """The one certificate builder: `key`'s certificate for `subject`, signed by `issuer_key`
    (`key` itself for a self-signed one). A CA gets a critical KeyUsage (certificate signing,
    CRL signing if `crl_sign`); `server_auth` adds the serverAuth EKU, `key_ids` the subject
    and authority key identifiers (what a certificate that is its own trust anchor carries)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    builder = builder.add_extension(
        x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=crl_sign,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if server_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if key_ids:
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(ski, critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pem(cert_path: Path, key_path: Path, cert: x509.Certificate, key: Key) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


@dataclass(frozen=True)
class TestCerts:
    """`ca_file` is what targets trust; each pair is one server certificate."""

    __test__ = False  # not a pytest test class, despite the name

    ca_file: Path
    ok: CertPair  # valid for 127.0.0.1 and localhost
    expired: CertPair  # issued by the CA, notAfter in the past
    wrong_host: CertPair  # issued by the CA, for a name that is not the one dialled
    self_signed: CertPair  # valid dates and host, but issued by nobody the target trusts


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key) -> CertPair:
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    write_pem(pair.cert, pair.key, cert, key)
    return pair


def _leaf(
    cn: str,
    sans: list[x509.GeneralName],
    issuer: x509.Name,
    issuer_key: Key | None,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[x509.Certificate, Key]:
    """A server certificate; self-signed (issued by itself, though not a CA) if `issuer_key`
    is None."""
    key = new_key()
    subject = _name(cn)
    cert = issue(subject, key, issuer if issuer_key is not None else subject, issuer_key or key,
                 not_before, not_after, sans=sans)
    return cert, key


def make_certs(directory: Path) -> TestCerts:
    """Generate the CA and the four leaves into `directory` (a pytest tmp_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = new_key()
    ca_name = _name("stageprobe test CA")
    ca = _ca(ca_name, ca_key, ca_name, ca_key, now - dt.timedelta(days=30),
             now + dt.timedelta(days=30), path_length=0)
    ca_pair = _write(directory, "ca", ca, ca_key)
    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    valid = (now - dt.timedelta(days=1), now + dt.timedelta(days=10))
    ok = _write(directory, "ok", *_leaf("127.0.0.1", loopback, ca_name, ca_key, *valid))
    expired = _write(
        directory, "expired",
        *_leaf("127.0.0.1", loopback, ca_name, ca_key,
               now - dt.timedelta(days=20), now - dt.timedelta(days=2)),
    )
    wrong = _write(
        directory, "wrong_host",
        *_leaf("wrong.invalid", [x509.DNSName("wrong.invalid")], ca_name, ca_key, *valid),
    )
    self_signed = _write(
        directory, "self_signed", *_leaf("127.0.0.1", loopback, ca_name, None, *valid)
    )
    return TestCerts(ca_file=ca_pair.cert, ok=ok, expired=expired, wrong_host=wrong,
                     self_signed=self_signed)


@dataclass(frozen=True)
class Chain:
    """A private CA -> intermediate -> leaf chain whose intermediate expires before the leaf
    (the case blackbox's probe_ssl_earliest_cert_expiry exists for). `server` holds the leaf
    and the intermediate, as a server sends them; targets trust `ca_file` (the root only)."""

    ca_file: Path
    server: CertPair
    intermediate_not_after: float
    leaf_not_after: float


def make_chain(directory: Path, intermediate_days: int = 5, leaf_days: int = 20) -> Chain:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    since = now - dt.timedelta(days=1)
    root_key, mid_key = new_key(), new_key()
    root_name, mid_name = _name("stageprobe test root"), _name("stageprobe test intermediate")
    root = _ca(root_name, root_key, root_name, root_key, since, now + dt.timedelta(days=90))
    mid_after = now + dt.timedelta(days=intermediate_days)
    mid = _ca(mid_name, mid_key, root_name, root_key, since, mid_after)
    leaf_after = now + dt.timedelta(days=leaf_days)
    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    leaf, leaf_key = _leaf("127.0.0.1", loopback, mid_name, mid_key, since, leaf_after)
    ca_pair = _write(directory, "chain-root", root, root_key)
    server = _write(directory, "chain-leaf", leaf, leaf_key)
    with server.cert.open("ab") as out:  # the leaf, then the intermediate it was issued by
        out.write(mid.public_bytes(serialization.Encoding.PEM))
    return Chain(ca_pair.cert, server, mid_after.timestamp(), leaf_after.timestamp())


def _ca(
    name: x509.Name, key: Key, issuer: x509.Name, issuer_key: Key, not_before: dt.datetime,
    not_after: dt.datetime, path_length: int | None = None,
) -> x509.Certificate:
    return issue(name, key, issuer, issuer_key, not_before, not_after, ca=True,
                 path_length=path_length)


@dataclass(frozen=True)
class SelfSigned:
    cert_file: Path
    key_file: Path
    not_after: float  # epoch seconds

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_self_signed(directory: Path, days: int = 30) -> SelfSigned:
    """Write `cert.pem` and `key.pem` for localhost / 127.0.0.1 / ::1 into `directory`: a CA
    certificate that is its own issuer, so a client that does not trust it sees exactly the
    `self-signed certificate` verification error, and a client given it as `ca_file` trusts it
    (unlike `TestCerts.self_signed`, which no client is meant to trust)."""
    key = new_key()
    name = _name("localhost")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = issue(name, key, name, key, now - dt.timedelta(minutes=5), not_after, sans=sans,
                 ca=True, crl_sign=False, server_auth=True, key_ids=True)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    write_pem(cert_file, key_file, cert, key)
    key_file.chmod(0o600)
    return SelfSigned(cert_file, key_file, not_after.timestamp())

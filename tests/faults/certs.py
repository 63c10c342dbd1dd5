"""Test certificates made at test time: a CA, and leaves that fail verification in one way each.

Every leaf except the self-signed one is issued by the same test CA, and targets trust that CA
through `ca_file`, so that what fails is exactly the fault under test (expiry, host) and not an
unknown issuer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertPair(cert_path, key_path)


def _leaf(
    cn: str,
    sans: list[x509.GeneralName],
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer if issuer_key is not None else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def make_certs(directory: Path) -> TestCerts:
    """Generate the CA and the four leaves into `directory` (a pytest tmp_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
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
    root_key, mid_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
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
    name: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey, not_before: dt.datetime, not_after: dt.datetime,
    path_length: int | None = None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )

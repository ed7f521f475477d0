"""Certificates made in memory for the TLS tests (a CA and the host certificates it signs).

On the import path through pytest's ``pythonpath = ["tests"]``; ``from pki import ...``.
The lab makes its own with certtool (``lab.pki``); these stand for the broken ones a
real site ends up with: another CA, expired, for another name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM text."""

    cert_pem: str
    key_pem: str
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def make_ca(name: str = "vmotion test CA", *, now: dt.datetime = NOW) -> Issued:
    """A self-signed CA valid from a day before ``now`` for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key), key, cert)


def make_cert(
    ca: Issued,
    cn: str,
    *,
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    server: bool = True,
    now: dt.datetime = NOW,
    valid_from_days: float = -1,
    valid_days: float = 365,
) -> Issued:
    """A host certificate signed by ``ca``, valid from ``now + valid_from_days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = now + dt.timedelta(days=valid_from_days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key), key, cert)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """An existing certificate and its key (the lab's CA, to sign with it)."""
    cert_pem, key_pem = cert_path.read_text(), key_path.read_text()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return Issued(cert_pem, key_pem, key, x509.load_pem_x509_certificate(cert_pem.encode()))  # type: ignore[arg-type]

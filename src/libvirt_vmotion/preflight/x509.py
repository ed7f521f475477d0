"""What the TLS pre-flight needs to know about a certificate, read from its PEM text.

Pure: no I/O, no clock, no logging. The PEM text comes from our agent on each host
(``adapters.tlsfiles``); the time to judge validity by comes in as an argument.

Why the ``cryptography`` package rather than ``openssl x509 -text`` or ``certtool -i``
run with a timeout: the checks need structured fields (SAN entries by type, validity
as a time, the public key) and a real signature check for "issued by this CA";
both tools print localized, version-dependent text for the former and neither
verifies one certificate against another CA file without building a chain store.
``cryptography`` is a wheel for every platform we run on, parses without a
subprocess, and ``verify_directly_issued_by`` is the check GnuTLS makes in QEMU.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on use: cryptography is 45 ms of every command's start-up
    from cryptography import x509


@dataclass(frozen=True, slots=True)
class CertInfo:
    """One certificate's facts, as the checks use them.

    Attributes:
        subject: the subject, RFC 4514 (``CN=hostb,O=lab``).
        issuer: the issuer, RFC 4514.
        common_name: the subject's CN ("" without one).
        dns_names: subjectAltName DNS entries.
        ip_addresses: subjectAltName IP entries, normalized text.
        not_before_s: start of validity, Unix seconds.
        not_after_s: end of validity, Unix seconds.
        is_ca: basicConstraints CA:TRUE.
        public_key_sha256: SHA-256 of the DER SubjectPublicKeyInfo (to match a key).

    """

    subject: str
    issuer: str
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before_s: float
    not_after_s: float
    is_ca: bool
    public_key_sha256: str

    def names(self) -> str:
        """The names a peer may reach this certificate's host by, for messages."""
        sans = [*self.dns_names, *self.ip_addresses]
        return ", ".join(sans) if sans else f"CN={self.common_name or '(none)'} (no SAN)"


def _certificates(pem: str) -> list[x509.Certificate]:
    from cryptography import x509  # noqa: PLC0415  on use (start-up)

    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        msg = f"not a PEM certificate ({exc})"
        raise ValueError(msg) from None


def public_key_sha256(public_key: object) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  on use

    der = public_key.public_bytes(  # type: ignore[attr-defined]  # every key type has it
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _info(cert: x509.Certificate) -> CertInfo:
    from cryptography import x509  # noqa: PLC0415  on use (start-up)
    from cryptography.x509.oid import NameOID  # noqa: PLC0415  on use

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=str(cns[0].value) if cns else "",
        dns_names=dns,
        ip_addresses=ips,
        not_before_s=cert.not_valid_before_utc.timestamp(),
        not_after_s=cert.not_valid_after_utc.timestamp(),
        is_ca=is_ca,
        public_key_sha256=public_key_sha256(cert.public_key()),
    )


def parse_certificates(pem: str) -> tuple[CertInfo, ...]:
    """Every certificate in ``pem`` (a CA file may hold several), first first.

    Raises:
        ValueError: no certificate in it, or a malformed one (the message says).

    """
    return tuple(_info(c) for c in _certificates(pem))


def issued_by(cert_pem: str, ca_pem: str) -> bool:
    """True if the first certificate of ``cert_pem`` is signed by one in ``ca_pem``.

    The check QEMU's GnuTLS makes against its ``ca-cert.pem`` (one level: the lab's
    and libvirt's documented set-ups sign host certificates with the CA directly).
    Unparsable input is simply not issued by anything.
    """
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415  on use (start-up)

    try:
        cert = _certificates(cert_pem)[0]
        cas = _certificates(ca_pem)
    except (ValueError, IndexError):
        return False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def valid_for_host(info: CertInfo, host: str) -> bool:
    """True if a TLS client connecting to ``host`` accepts ``info`` by name.

    As GnuTLS checks a peer (``gnutls_x509_crt_check_hostname``): an IP address must
    be a SAN IP entry; a name must match a SAN DNS entry (``*.`` matches one label);
    the subject's CN counts only when the certificate has no SAN of that type.

    ==========  ==========================  =====
    host        certificate                 valid
    ==========  ==========================  =====
    10.77.0.2   SAN IP 10.77.0.2            True
    10.77.0.2   SAN DNS hostb only          False
    hostb       SAN DNS hostb               True
    hostb.lab   SAN DNS *.lab               True
    hostb       CN hostb, no SAN            True
    ==========  ==========================  =====
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        if info.ip_addresses:
            return any(ipaddress.ip_address(ip) == addr for ip in info.ip_addresses)
        return not info.dns_names and info.common_name == str(addr)
    name = host.rstrip(".").lower()
    if not info.dns_names:
        return info.common_name.lower() == name
    return any(_dns_match(pattern.lower(), name) for pattern in info.dns_names)


def _dns_match(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern.rstrip(".") == name

"""The agent's ``tls-facts`` operation: a host's migration certificates, as QEMU finds them.

I/O: reads ``qemu.conf`` and the certificate directory of the host it runs on;
holds no policy (``preflight.tls`` judges). Certificates come back as their PEM
text (public); of a private key only whether it is there and readable, and the
SHA-256 of its public half (to match it with its certificate): a key never leaves
the host.

libvirt's rules (``qemu.conf``): QEMU's migration TLS files live in
``migrate_tls_x509_cert_dir``, else ``default_tls_x509_cert_dir``, else
``/etc/pki/qemu``; the destination checks the source's client certificate when
``migrate_tls_x509_verify`` (else ``default_tls_x509_verify``, else on) says so;
the source connects to the destination's ``migration_host``, else its hostname.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Final

QEMU_CONF: Final = Path("/etc/libvirt/qemu.conf")
DEFAULT_CERT_DIR: Final = "/etc/pki/qemu"
CERT_FILES: Final = ("ca-cert.pem", "server-cert.pem", "client-cert.pem")
KEY_FILES: Final = ("server-key.pem", "client-key.pem")
MAX_PEM_BYTES: Final = 64 * 1024
"""The most read of one certificate file (a CA bundle of a few certificates is ~10 KiB)."""

_SETTING: Final = re.compile(r'^\s*([a-z_0-9]+)\s*=\s*(?:"([^"]*)"|(\S+))')


def parse_qemu_conf(text: str) -> dict[str, str]:
    r"""The ``key = value`` settings of a ``qemu.conf`` (quotes removed, comments skipped).

    >>> parse_qemu_conf('# x = 1\nmigration_host = "10.0.0.2"\nmigrate_tls_x509_verify = 0\n')
    {'migration_host': '10.0.0.2', 'migrate_tls_x509_verify': '0'}
    """
    settings: dict[str, str] = {}
    for line in text.splitlines():
        found = _SETTING.match(line)
        if found:
            settings[found[1]] = found[2] if found[2] is not None else found[3]
    return settings


def cert_dir(settings: Mapping[str, str]) -> tuple[str, str]:
    """The directory QEMU's migration TLS files are in, and which setting named it."""
    for key in ("migrate_tls_x509_cert_dir", "default_tls_x509_cert_dir"):
        if settings.get(key):
            return settings[key], key
    return DEFAULT_CERT_DIR, "libvirt's default"


def verifies_clients(settings: Mapping[str, str]) -> bool:
    """True if this host, as a destination, demands the source's client certificate."""
    for key in ("migrate_tls_x509_verify", "default_tls_x509_verify"):
        if key in settings:
            return settings[key] not in {"0", "false"}
    return True


def _cert_file(path: Path) -> dict[str, object]:
    if not path.exists():
        return {"present": False}
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        return {"present": True, "error": f"cannot read it: {exc.strerror}"}
    if len(data) > MAX_PEM_BYTES:
        return {"present": True, "error": f"larger than {MAX_PEM_BYTES >> 10} KiB"}
    return {"present": True, "pem": data.decode(errors="replace")}


def _key_file(path: Path) -> dict[str, object]:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  only here

    if not path.exists():
        return {"present": False}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {"present": True, "error": f"cannot read it: {exc.strerror}"}
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        return {"present": True, "error": f"not an unencrypted PEM private key ({exc})"}
    # As preflight.x509.public_key_sha256 hashes a certificate's key, to compare the two.
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"present": True, "public_key_sha256": hashlib.sha256(der).hexdigest()}


def tls_facts(qemu_conf: Path = QEMU_CONF) -> dict[str, object]:
    """The migration TLS facts of the host it runs on (``tls-facts``; see the module doc)."""
    try:
        settings = parse_qemu_conf(qemu_conf.read_text())
        conf_error = ""
    except OSError as exc:
        settings, conf_error = {}, f"cannot read {qemu_conf}: {exc.strerror}"
    directory, named_by = cert_dir(settings)
    files: dict[str, object] = {name: _cert_file(Path(directory) / name) for name in CERT_FILES}
    files.update({name: _key_file(Path(directory) / name) for name in KEY_FILES})
    hostname = socket.gethostname()
    return {
        "hostname": hostname,
        "qemu_conf": str(qemu_conf),
        "qemu_conf_error": conf_error,
        "cert_dir": directory,
        "cert_dir_setting": named_by,
        "verify_clients": verifies_clients(settings),
        "migration_host": settings.get("migration_host") or hostname,
        "files": files,
    }


def op_tls_facts(_args: Mapping[str, object]) -> dict[str, object]:
    """Agent operation ``tls-facts``: this host's migration TLS facts."""
    return tls_facts()

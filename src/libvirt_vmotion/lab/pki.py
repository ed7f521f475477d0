"""The lab's certificates: one lab CA, and per host what libvirt and QEMU use for TLS.

Made with GnuTLS's ``certtool``, as libvirt's TLS guide does
(https://libvirt.org/kbase/tlscerts.html). The template builders are pure; ``prepare``
runs certtool (I/O). Everything is made afresh on each build (a second), under
``STATE_DIR``:

    STATE_DIR/pki/ca/            the lab CA (key and certificate)
    STATE_DIR/pki/client/        the controller's libvirt client files, for
                                 ``qemu+tls://...?pkipath=`` URIs: cacert.pem,
                                 clientcert.pem, clientkey.pem
    STATE_DIR/<host>/pki/        the host's /etc/pki (a bind mount in its namespace):
      CA/cacert.pem                  libvirtd's and libvirt clients' CA
      libvirt/servercert.pem         libvirtd's TLS listener (qemu+tls://)
      libvirt/private/serverkey.pem
      libvirt/clientcert.pem         the host's libvirtd as a client (peer-to-peer)
      libvirt/private/clientkey.pem
      qemu/ca-cert.pem               QEMU's migration TLS (qemu.conf's
      qemu/server-cert.pem           migrate_tls_x509_cert_dir): server on the
      qemu/server-key.pem            destination, client on the source
      qemu/client-cert.pem
      qemu/client-key.pem

A host's server certificate names its lab address and hostname: libvirt checks the
URI's host against it, the source's QEMU the destination's ``migration_host``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.lab.constants import HOSTS, STATE_DIR

if TYPE_CHECKING:
    from libvirt_vmotion.lab.constants import LabHost

CERTTOOL_TIMEOUT_S: Final = 30
CA_NAME: Final = "libvirt-vmotion lab CA"
CONTROLLER_CN: Final = "vmotion-controller"


def pki_root(state_dir: Path = STATE_DIR) -> Path:
    """``STATE_DIR/pki``: the CA and the controller's client files."""
    return state_dir / "pki"


def client_pki_dir(state_dir: Path = STATE_DIR) -> Path:
    """The controller's ``pkipath`` directory (libvirt client CA, certificate, key)."""
    return pki_root(state_dir) / "client"


def build_ca_template() -> str:
    """Certtool template of the lab CA (ten years)."""
    return f'cn = "{CA_NAME}"\nca\ncert_signing_key\nexpiration_days = 3650\n'


def build_server_template(host: LabHost) -> str:
    """Certtool template of ``host``'s server certificate: its address and its name."""
    return (
        'organization = "libvirt-vmotion lab"\n'
        f'cn = "{host.name}"\n'
        f'dns_name = "{host.name}"\n'
        f'ip_address = "{host.addr}"\n'
        "tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 365\n"
    )


def build_client_template(cn: str) -> str:
    """Certtool template of a client certificate (a host's, or the controller's)."""
    return (
        'organization = "libvirt-vmotion lab"\n'
        f'cn = "{cn}"\n'
        "tls_www_client\nencryption_key\nsigning_key\nexpiration_days = 365\n"
    )


HOST_FILES: Final = {
    "CA/cacert.pem": "ca-cert.pem",
    "libvirt/servercert.pem": "server-cert.pem",
    "libvirt/private/serverkey.pem": "server-key.pem",
    "libvirt/clientcert.pem": "client-cert.pem",
    "libvirt/private/clientkey.pem": "client-key.pem",
    "qemu/ca-cert.pem": "ca-cert.pem",
    "qemu/server-cert.pem": "server-cert.pem",
    "qemu/server-key.pem": "server-key.pem",
    "qemu/client-cert.pem": "client-cert.pem",
    "qemu/client-key.pem": "client-key.pem",
}
"""Where each made file goes in a host's /etc/pki tree: {relative path: made file}."""


def _certtool(*args: str) -> None:
    try:
        subprocess.run(
            ["certtool", *args],
            check=True,
            capture_output=True,
            timeout=CERTTOOL_TIMEOUT_S,
        )
    except FileNotFoundError as exc:
        msg = "certtool not found: install gnutls-bin (scripts/install-system.sh does)"
        raise OSError(msg) from exc
    except subprocess.TimeoutExpired as exc:
        msg = f"certtool {args[0]} took more than {CERTTOOL_TIMEOUT_S} s"
        raise OSError(msg) from exc


def _issue(work: Path, name: str, template: str, *, ca: Path | None) -> None:
    """Make ``name-key.pem`` and ``name-cert.pem`` in ``work`` (self-signed without ``ca``)."""
    key, cert, info = work / f"{name}-key.pem", work / f"{name}-cert.pem", work / f"{name}.info"
    info.write_text(template)
    _certtool("--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", str(key))
    if ca is None:
        _certtool(
            "--generate-self-signed", "--load-privkey", str(key), "--template", str(info),
            "--outfile", str(cert),
        )  # fmt: skip
        return
    _certtool(
        "--generate-certificate", "--load-privkey", str(key),
        "--load-ca-certificate", str(ca / "ca-cert.pem"),
        "--load-ca-privkey", str(ca / "ca-key.pem"),
        "--template", str(info), "--outfile", str(cert),
    )  # fmt: skip


def _install(made: Path, files: dict[str, str], into: Path) -> None:
    """Copy made files into a fresh ``into`` tree; keys readable by root only."""
    shutil.rmtree(into, ignore_errors=True)
    for rel, source in files.items():
        target = into / rel
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(made / source, target)
        target.chmod(0o600 if "key" in source else 0o644)


def prepare(state_dir: Path = STATE_DIR, hosts: tuple[LabHost, ...] = HOSTS) -> None:
    """Make the lab CA and every host's (and the controller's) certificates, and install them.

    Raises:
        OSError: certtool is missing or hung.
        subprocess.CalledProcessError: certtool failed.

    """
    root = pki_root(state_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = root / "ca"
    shutil.rmtree(ca, ignore_errors=True)
    ca.mkdir(mode=0o700)
    _issue(ca, "ca", build_ca_template(), ca=None)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        _issue(work, "controller", build_client_template(CONTROLLER_CN), ca=ca)
        shutil.copyfile(ca / "ca-cert.pem", work / "ca-cert.pem")
        controller = {
            "cacert.pem": "ca-cert.pem",
            "clientcert.pem": "controller-cert.pem",
            "clientkey.pem": "controller-key.pem",
        }
        _install(work, controller, client_pki_dir(state_dir))
        for host in hosts:
            _issue(work, "server", build_server_template(host), ca=ca)
            _issue(work, "client", build_client_template(host.name), ca=ca)
            _install(work, HOST_FILES, state_dir / host.name / "pki")

"""The lab's certificates, made by the real certtool, pass our own TLS pre-flight."""

from __future__ import annotations

import time
from pathlib import Path

from libvirt_vmotion.adapters.tlsfiles import tls_facts
from libvirt_vmotion.lab import pki
from libvirt_vmotion.lab.constants import HOST_A, HOST_B
from libvirt_vmotion.model import TlsMode
from libvirt_vmotion.preflight.result import Verdict
from libvirt_vmotion.preflight.tls import HostTls, TlsInputs, plan_tls
from libvirt_vmotion.preflight.x509 import issued_by
from needs import needs_tool


def _as_agent_sees(state: Path, name: str, addr: str) -> HostTls:
    conf = state / f"{name}.qemu.conf"
    cert_dir = state / name / "pki" / "qemu"
    conf.write_text(f'migrate_tls_x509_cert_dir = "{cert_dir}"\nmigration_host = "{addr}"\n')
    return HostTls.from_agent(tls_facts(conf), host=name)


@needs_tool("certtool", installed_by="scripts/install-system.sh: gnutls-bin")
def test_lab_certificates_pass_the_tls_preflight_both_ways(tmp_path: Path) -> None:
    pki.prepare(tmp_path, (HOST_A, HOST_B))
    a = _as_agent_sees(tmp_path, "hosta", HOST_A.addr)
    b = _as_agent_sees(tmp_path, "hostb", HOST_B.addr)
    for source, dest in ((a, b), (b, a)):
        plan = plan_tls(TlsInputs(TlsMode.REQUIRE, source, dest, time.time()))
        assert plan.use_tls
        assert all(r.verdict is Verdict.OK for r in plan.results), plan.results
    key = tmp_path / "hosta" / "pki" / "qemu" / "server-key.pem"
    assert key.stat().st_mode & 0o077 == 0
    client = pki.client_pki_dir(tmp_path)
    assert {p.name for p in client.iterdir()} == {"cacert.pem", "clientcert.pem", "clientkey.pem"}
    ca = (client / "cacert.pem").read_text()
    assert issued_by((tmp_path / "hostb" / "pki" / "libvirt" / "servercert.pem").read_text(), ca)

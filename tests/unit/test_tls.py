"""Encrypted migration: the decision, the certificate checks and the agent's facts.

Certificates are real (made in memory by ``tests/pki.py``), written to real
directories with a real ``qemu.conf``, read by the agent's own ``tls_facts``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from libvirt_vmotion.adapters.tlsfiles import cert_dir, parse_qemu_conf, tls_facts, verifies_clients
from libvirt_vmotion.model import TlsMode
from libvirt_vmotion.preflight.registry import check_names
from libvirt_vmotion.preflight.result import CheckResult, Verdict
from libvirt_vmotion.preflight.tls import HostTls, TlsInputs, plan_tls
from libvirt_vmotion.preflight.x509 import issued_by, parse_certificates, valid_for_host
from pki import NOW, Issued, make_ca, make_cert

NOW_S = NOW.timestamp()
CA = make_ca()


def host_dir(
    root: Path,
    name: str,
    *,
    ca: Issued = CA,
    server: Issued | None = None,
    client: Issued | None = None,
    addr: str = "",
    leave_out: tuple[str, ...] = (),
    conf: str = "",
) -> HostTls:
    """A host's cert directory and qemu.conf on disk, read back as the agent reads it."""
    pki = root / name / "pki"
    pki.mkdir(parents=True)
    is_ip = addr.replace(".", "").isdigit()
    server = server or make_cert(ca, name, ips=(addr,) if is_ip else (), dns=(name,))
    client = client or make_cert(ca, name, server=False)
    files = {
        "ca-cert.pem": ca.cert_pem,
        "server-cert.pem": server.cert_pem,
        "server-key.pem": server.key_pem,
        "client-cert.pem": client.cert_pem,
        "client-key.pem": client.key_pem,
    }
    for file, text in files.items():
        if file not in leave_out:
            (pki / file).write_text(text)
    qemu_conf = root / name / "qemu.conf"
    host_line = f'migration_host = "{addr}"\n' if addr else ""
    qemu_conf.write_text(f'migrate_tls_x509_cert_dir = "{pki}"\n{host_line}{conf}')
    reply = tls_facts(qemu_conf)
    return HostTls.from_agent(reply, host=name)


def pair(tmp_path: Path, mode: TlsMode = TlsMode.AUTO, **dest: object) -> TlsInputs:
    source = host_dir(tmp_path, "hosta", addr="10.77.0.1")
    target = host_dir(tmp_path, "hostb", addr=str(dest.pop("addr", "10.77.0.2")), **dest)  # type: ignore[arg-type]
    return TlsInputs(mode, source, target, NOW_S)


def named(results: tuple[CheckResult, ...], name: str) -> list[CheckResult]:
    return [r for r in results if r.name == name]


def test_both_hosts_ready_encrypts_and_every_check_passes(tmp_path: Path) -> None:
    plan = plan_tls(pair(tmp_path))
    assert plan.use_tls
    assert {r.name for r in plan.results} == {"migrate-tls", "tls-ca", "tls-name", "tls-expiry"}
    assert all(r.verdict is Verdict.OK for r in plan.results), plan.results
    assert "10.77.0.2" in named(plan.results, "tls-name")[0].message


def test_auto_with_a_destination_without_certificates_migrates_plaintext_and_warns(
    tmp_path: Path,
) -> None:
    plan = plan_tls(pair(tmp_path, leave_out=("server-cert.pem", "server-key.pem")))
    assert not plan.use_tls
    [warning] = [r for r in plan.results if r.verdict is not Verdict.OK]
    assert warning.name == "migrate-tls"
    assert warning.verdict is Verdict.WARNING
    assert warning.subject == "destination"
    assert "server-cert.pem" in warning.message
    assert "unencrypted" in warning.message
    assert "certtool --generate-certificate" in warning.hint
    assert "--tls off" in warning.hint
    assert "--skip-check migrate-tls" in warning.hint


def test_require_with_a_destination_without_certificates_is_a_named_blocker(
    tmp_path: Path,
) -> None:
    plan = plan_tls(pair(tmp_path, TlsMode.REQUIRE, leave_out=("ca-cert.pem",)))
    [blocker] = [r for r in plan.results if r.blocks]
    assert blocker.name == "migrate-tls"
    assert "hostb" in blocker.message
    assert "ca-cert.pem" in blocker.message
    assert plan.use_tls  # skipped, it still asks libvirt to encrypt: never plaintext


def test_off_asks_nothing_and_says_it_is_unencrypted(tmp_path: Path) -> None:
    facts = pair(tmp_path, TlsMode.OFF, leave_out=("ca-cert.pem",))
    plan = plan_tls(facts)
    assert not plan.use_tls
    assert [(r.name, r.verdict) for r in plan.results] == [("migrate-tls", Verdict.OK)]
    assert "unencrypted" in plan.results[0].message


def test_a_destination_certificate_from_another_ca_blocks_even_under_auto(
    tmp_path: Path,
) -> None:
    other = make_ca("someone else's CA")
    plan = plan_tls(pair(tmp_path, server=make_cert(other, "hostb", ips=("10.77.0.2",))))
    [blocker] = [r for r in plan.results if r.blocks]
    assert blocker.name == "tls-ca"
    assert "server-cert.pem on hostb" in blocker.message
    assert "someone else's CA" in blocker.message
    assert plan.use_tls


def test_a_source_client_certificate_from_another_ca_blocks_only_if_the_destination_checks_it(
    tmp_path: Path,
) -> None:
    other = make_ca("other")
    source = host_dir(tmp_path, "hosta", client=make_cert(other, "hosta", server=False))
    checking = host_dir(tmp_path / "1", "hostb", addr="hostb")
    relaxed = host_dir(tmp_path / "2", "hostb", addr="hostb", conf="migrate_tls_x509_verify = 0\n")
    blocked = plan_tls(TlsInputs(TlsMode.AUTO, source, checking, NOW_S))
    assert [r.subject for r in blocked.results if r.blocks] == ["hosta"]
    assert not [
        r for r in plan_tls(TlsInputs(TlsMode.AUTO, source, relaxed, NOW_S)).results if r.blocks
    ]


def test_a_source_without_client_certificate_is_ready_when_the_destination_does_not_check(
    tmp_path: Path,
) -> None:
    source = host_dir(tmp_path, "hosta", leave_out=("client-cert.pem", "client-key.pem"))
    dest = host_dir(tmp_path, "hostb", addr="hostb", conf="default_tls_x509_verify = 0\n")
    plan = plan_tls(TlsInputs(TlsMode.REQUIRE, source, dest, NOW_S))
    assert plan.use_tls
    assert not [r for r in plan.results if r.verdict is not Verdict.OK]


@pytest.mark.parametrize(
    ("valid_from_days", "valid_days", "verdict", "words"),
    [
        (-400, 30, Verdict.BLOCKER, "expired"),
        (2, 30, Verdict.BLOCKER, "not valid yet"),
        (-30, 33, Verdict.WARNING, "expires in 3.0 days"),
        (-30, 60, Verdict.OK, "every certificate is valid"),
    ],
)
def test_expiry_is_judged_by_the_time_given(
    tmp_path: Path, valid_from_days: float, valid_days: float, verdict: Verdict, words: str
) -> None:
    cert = make_cert(
        CA, "hostb", ips=("10.77.0.2",), valid_from_days=valid_from_days, valid_days=valid_days
    )
    [result] = named(plan_tls(pair(tmp_path, server=cert)).results, "tls-expiry")
    assert result.verdict is verdict
    assert words in result.message
    if verdict is not Verdict.OK:
        assert result.subject == "hostb:server-cert.pem"
        assert "--outfile" in result.hint


def test_a_destination_certificate_for_another_address_blocks_and_names_both(
    tmp_path: Path,
) -> None:
    cert = make_cert(CA, "hostb", ips=("10.77.0.9",), dns=("hostb",))
    [result] = named(plan_tls(pair(tmp_path, server=cert)).results, "tls-name")
    assert result.blocks
    assert "10.77.0.9" in result.message
    assert "10.77.0.2" in result.message
    assert "ip_address = 10.77.0.2" in result.hint


def test_a_key_that_belongs_to_another_certificate_blocks(tmp_path: Path) -> None:
    source = host_dir(tmp_path, "hosta")
    dest = host_dir(tmp_path, "hostb", addr="10.77.0.2")
    stray = make_cert(CA, "hostb")
    Path(dest.path("server-key.pem")).write_text(stray.key_pem)
    dest = HostTls.from_agent(tls_facts(tmp_path / "hostb" / "qemu.conf"), host="hostb")
    [blocker] = [
        r for r in plan_tls(TlsInputs(TlsMode.AUTO, source, dest, NOW_S)).results if r.blocks
    ]
    assert blocker.name == "migrate-tls"
    assert "does not hold the key" in blocker.message


def test_a_file_that_is_not_a_certificate_blocks(tmp_path: Path) -> None:
    source = host_dir(tmp_path, "hosta")
    Path(source.path("ca-cert.pem")).write_text("not a certificate\n")
    source = HostTls.from_agent(tls_facts(tmp_path / "hosta" / "qemu.conf"), host="hosta")
    dest = host_dir(tmp_path, "hostb", addr="10.77.0.2")
    [blocker] = [
        r for r in plan_tls(TlsInputs(TlsMode.AUTO, source, dest, NOW_S)).results if r.blocks
    ]
    assert "ca-cert.pem on hosta" in blocker.message


@pytest.mark.parametrize(("mode", "use_tls"), [(TlsMode.AUTO, False), (TlsMode.REQUIRE, True)])
def test_an_unreachable_agent_is_a_warning_and_require_still_encrypts(
    tmp_path: Path, mode: TlsMode, use_tls: bool
) -> None:
    source = host_dir(tmp_path, "hosta")
    dest = HostTls.unavailable("hostb", "ssh: connection refused")
    plan = plan_tls(TlsInputs(mode, source, dest, NOW_S))
    assert plan.use_tls is use_tls
    [result] = plan.results
    assert result.verdict is Verdict.WARNING
    assert "connection refused" in result.message


def test_every_tls_result_name_is_skippable() -> None:
    assert {"migrate-tls", "tls-ca", "tls-name", "tls-expiry"} <= set(check_names())


# ------------------------------------------------------------------ qemu.conf and x509


def test_qemu_conf_settings_name_the_directory_in_libvirts_order() -> None:
    conf = parse_qemu_conf(
        '# migrate_tls_x509_cert_dir = "/nope"\n'
        'default_tls_x509_cert_dir = "/etc/pki/qemu-default"\n'
        "migrate_tls_x509_verify = 0\n"
    )
    assert cert_dir(conf) == ("/etc/pki/qemu-default", "default_tls_x509_cert_dir")
    assert cert_dir({}) == ("/etc/pki/qemu", "libvirt's default")
    assert not verifies_clients(conf)
    assert verifies_clients({})


def test_the_agent_never_sends_a_private_key(tmp_path: Path) -> None:
    host_dir(tmp_path, "hosta")
    reply = tls_facts(tmp_path / "hosta" / "qemu.conf")
    text = repr(reply)
    assert "PRIVATE KEY" not in text
    assert "BEGIN CERTIFICATE" in text


def test_an_unreadable_qemu_conf_falls_back_to_the_default_directory(tmp_path: Path) -> None:
    reply = tls_facts(tmp_path / "missing.conf")
    assert reply["cert_dir"] == "/etc/pki/qemu"
    assert "cannot read" in str(reply["qemu_conf_error"])


@pytest.mark.parametrize(
    ("host", "ips", "dns", "cn", "valid"),
    [
        ("10.77.0.2", ("10.77.0.2",), (), "x", True),
        ("10.77.0.2", (), ("hostb",), "10.77.0.2", False),
        ("hostb", (), ("hostb",), "x", True),
        ("hostb.lab", (), ("*.lab",), "x", True),
        ("a.b.lab", (), ("*.lab",), "x", False),
        ("hostb", (), (), "hostb", True),
        ("hostc", (), (), "hostb", False),
    ],
)
def test_host_names_match_as_gnutls_checks_them(
    host: str, ips: tuple[str, ...], dns: tuple[str, ...], cn: str, valid: bool
) -> None:
    info = parse_certificates(make_cert(CA, cn, ips=ips, dns=dns).cert_pem)[0]
    assert valid_for_host(info, host) is valid


def test_issued_by_checks_the_signature_not_just_the_name() -> None:
    impostor = make_ca()  # the same subject, another key
    cert = make_cert(CA, "hostb")
    assert issued_by(cert.cert_pem, CA.cert_pem)
    assert not issued_by(cert.cert_pem, impostor.cert_pem)
    assert issued_by(cert.cert_pem, impostor.cert_pem + CA.cert_pem)  # a bundle
    assert not issued_by("garbage", CA.cert_pem)


def test_validity_is_read_in_utc_seconds() -> None:
    info = parse_certificates(make_cert(CA, "h", valid_from_days=0, valid_days=2).cert_pem)[0]
    assert info.not_before_s == pytest.approx(NOW.timestamp(), abs=1)
    assert info.not_after_s - info.not_before_s == pytest.approx(
        dt.timedelta(days=2).total_seconds()
    )

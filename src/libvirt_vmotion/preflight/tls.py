"""Encrypted migration: may it use TLS, must it, and is each host ready for it.

Pure: no I/O, no clock, no logging. ``plan_tls`` takes the user's ``--tls`` mode
and both hosts' migration TLS facts (from our agent on each host,
``adapters.tlsfiles``; the time to judge expiry by comes in with them) and decides
whether the migration sets libvirt's TLS flag, with the named results that say why:

- both hosts have the files, all valid: TLS (``off``: plaintext, ok);
- a host lacks a file: ``auto`` plaintext with a warning, ``require`` a blocker;
- a file is broken, a certificate expired, from another CA or for another name:
  a blocker under ``auto`` and ``require``;
- a host's agent does not answer: ``auto`` plaintext with a warning, ``require``
  TLS with a warning (libvirt refuses to start if the files are missing).

A host that has its certificates but a broken one is not silently downgraded under
``auto``: its owner meant it to encrypt, so it blocks with what to fix (or
``--tls off`` to move it unencrypted knowingly).

Checks (``--skip-check NAME``): ``migrate-tls`` (the decision, and each host's
files), ``tls-ca`` (one CA trusted on both sides), ``tls-name`` (the destination's
certificate names the address the source connects to), ``tls-expiry`` (expired or
not yet valid: blocker; within 7 days: warning).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from libvirt_vmotion.model import TlsMode
from libvirt_vmotion.preflight.result import CheckResult, Verdict, bad, ok
from libvirt_vmotion.preflight.x509 import CertInfo, issued_by, parse_certificates, valid_for_host

CHECK_NAMES: Final = ("migrate-tls", "tls-ca", "tls-name", "tls-expiry")
EXPIRY_WARNING_S: Final = 7 * 86400
"""A certificate that expires sooner than this is a warning: renew it now."""
CA, SERVER_CERT, SERVER_KEY = "ca-cert.pem", "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
KEY_OF: Final = {SERVER_CERT: SERVER_KEY, CLIENT_CERT: CLIENT_KEY}
DOCS: Final = "https://libvirt.org/kbase/tlscerts.html"


@dataclass(frozen=True, slots=True)
class TlsFile:
    """One file of a host's migration TLS directory.

    Attributes:
        name: the file name (``server-cert.pem``).
        present: it exists.
        error: why it cannot be used (unreadable, not PEM, key does not match).
        pem: a certificate file's text.
        certs: a certificate file's certificates, parsed.
        key_sha256: a key file's public half (SHA-256 of its SubjectPublicKeyInfo).

    """

    name: str
    present: bool
    error: str = ""
    pem: str = ""
    certs: tuple[CertInfo, ...] = ()
    key_sha256: str = ""


@dataclass(frozen=True, slots=True)
class HostTls:
    """One host's migration TLS facts (``available`` False: its agent did not answer)."""

    host: str
    available: bool
    error: str = ""
    cert_dir: str = "/etc/pki/qemu"
    cert_dir_setting: str = "libvirt's default"
    verify_clients: bool = True
    migration_host: str = ""
    files: Mapping[str, TlsFile] = field(default_factory=dict)

    def file(self, name: str) -> TlsFile:
        """The file ``name`` (absent if the agent did not list it)."""
        return self.files.get(name, TlsFile(name, present=False))

    def path(self, name: str) -> str:
        """Where ``name`` is on the host."""
        return f"{self.cert_dir.rstrip('/')}/{name}"

    @classmethod
    def unavailable(cls, host: str, error: str) -> HostTls:
        """A host whose agent could not be asked."""
        return cls(host=host, available=False, error=error)

    @classmethod
    def from_agent(cls, reply: Mapping[str, object], *, host: str) -> HostTls:
        """Parse the agent's ``tls-facts`` reply (certificates parsed here)."""
        raw = reply.get("files")
        files = {
            str(name): _file(str(name), item)
            for name, item in (raw.items() if isinstance(raw, Mapping) else ())
            if isinstance(item, Mapping)
        }
        return cls(
            host=host,
            available=True,
            cert_dir=str(reply.get("cert_dir") or "/etc/pki/qemu"),
            cert_dir_setting=str(reply.get("cert_dir_setting") or ""),
            verify_clients=bool(reply.get("verify_clients", True)),
            migration_host=str(reply.get("migration_host") or ""),
            files=files,
        )


def _file(name: str, item: Mapping[str, object]) -> TlsFile:
    present, error = bool(item.get("present")), str(item.get("error") or "")
    pem, key = str(item.get("pem") or ""), str(item.get("public_key_sha256") or "")
    certs: tuple[CertInfo, ...] = ()
    if present and not error and name not in KEY_OF.values():
        try:
            certs = parse_certificates(pem)
        except ValueError as exc:
            error = str(exc)
        if not certs and not error:
            error = "no certificate in it"
    return TlsFile(name, present, error, pem, certs, key)


def check_tls(tls: TlsInputs | None) -> tuple[CheckResult, ...]:
    """The registry's entry: ``plan_tls``'s results (none when TLS facts were not gathered)."""
    return () if tls is None else plan_tls(tls).results


@dataclass(frozen=True, slots=True)
class TlsInputs:
    """What ``plan_tls`` decides from.

    Attributes:
        mode: the user's ``--tls``.
        source: the source host's facts.
        dest: the destination host's facts.
        now_s: wall-clock Unix seconds to judge validity by.

    """

    mode: TlsMode
    source: HostTls
    dest: HostTls
    now_s: float


@dataclass(frozen=True, slots=True)
class TlsPlan:
    """The decision: set libvirt's TLS flag or not, and the results that say why."""

    use_tls: bool
    results: tuple[CheckResult, ...]


def needed(t: TlsInputs) -> tuple[tuple[HostTls, str, tuple[str, ...]], ...]:
    """Each host, its role, and the files it needs for this migration.

    The source needs a client certificate only when the destination checks it
    (``migrate_tls_x509_verify``, on by default).
    """
    client = (CLIENT_CERT, CLIENT_KEY) if t.dest.verify_clients else ()
    return (
        (t.source, "source", (CA, *client)),
        (t.dest, "destination", (CA, SERVER_CERT, SERVER_KEY)),
    )


def plan_tls(t: TlsInputs) -> TlsPlan:
    """Decide whether to encrypt, and report why (see the module's table)."""
    if t.mode is TlsMode.OFF:
        result = ok(
            "migrate-tls",
            "TLS off by request (--tls off): memory and copied disks cross the network unencrypted",
            observed="off",
        )
        return TlsPlan(use_tls=False, results=(result,))
    unknown = [h for h in (t.source, t.dest) if not h.available]
    if unknown:
        return _plan_unknown(t, unknown)
    missing = {
        role: [n for n in names if not host.file(n).present] for host, role, names in needed(t)
    }
    if any(missing.values()):
        return _plan_missing(t, missing)
    broken = _broken(t)
    if broken:
        return TlsPlan(use_tls=True, results=tuple(broken))
    summary = ok(
        "migrate-tls",
        f"memory and copied disks encrypted (TLS): {t.source.host} {t.source.cert_dir} -> "
        f"{t.dest.host} {t.dest.cert_dir}",
        observed=f"--tls {t.mode}, certificates on both hosts",
    )
    results = (summary, *check_ca(t), *check_name(t), *check_expiry(t))
    return TlsPlan(use_tls=True, results=results)


def _plan_unknown(t: TlsInputs, unknown: list[HostTls]) -> TlsPlan:
    who = "; ".join(f"{h.host}: {h.error}" for h in unknown)
    if t.mode is TlsMode.REQUIRE:
        result = bad(
            "migrate-tls",
            Verdict.WARNING,
            f"Could not check the migration certificates ({who}); encrypting anyway: "
            "libvirt refuses to start the migration if a host lacks them.",
            observed="not checked",
            required="our agent on both hosts",
            hint="Make the agent reachable (vmotion agent check URI) to have them checked.",
        )
        return TlsPlan(use_tls=True, results=(result,))
    result = bad(
        "migrate-tls",
        Verdict.WARNING,
        f"Could not tell whether both hosts are set up for migration TLS ({who}): the "
        "migration runs unencrypted.",
        observed="not checked",
        required="our agent on both hosts",
        hint="Make the agent reachable (vmotion agent check URI), or pass --tls require to "
        "encrypt without the check.",
    )
    return TlsPlan(use_tls=False, results=(result,))


def _plan_missing(t: TlsInputs, missing: Mapping[str, list[str]]) -> TlsPlan:
    require = t.mode is TlsMode.REQUIRE
    results = []
    for host, role, _names in needed(t):
        lacking = missing[role]
        if not lacking:
            results.append(
                ok("migrate-tls", f"{host.host} has its migration certificates", subject=role)
            )
            continue
        files = ", ".join(host.path(n) for n in lacking)
        outcome = (
            "--tls require cannot be met"
            if require
            else "the migration runs unencrypted (--tls auto)"
        )
        results.append(
            bad(
                "migrate-tls",
                Verdict.BLOCKER if require else Verdict.WARNING,
                f"{host.host} ({role}) is not set up for migration TLS: no {files} "
                f"(directory from {host.cert_dir_setting or 'qemu.conf'}); {outcome}.",
                observed=f"missing {', '.join(lacking)}",
                required=", ".join(n for h, r, ns in needed(t) if r == role for n in ns),
                hint=create_hint(host, role, lacking, dest=t.dest)
                + ("" if require else " Or pass --tls off to migrate unencrypted knowingly."),
                subject=role,
            )
        )
    return TlsPlan(use_tls=require, results=tuple(results))


def create_hint(host: HostTls, role: str, lacking: list[str], *, dest: HostTls) -> str:
    """The certtool commands that make ``lacking`` on ``host`` (libvirt's TLS guide)."""
    d = host.cert_dir.rstrip("/")
    steps = []
    if CA in lacking:
        steps.append(f"copy your CA's certificate to {d}/{CA} on {host.host}")
    for cert in (SERVER_CERT, CLIENT_CERT):
        if cert in lacking or KEY_OF[cert] in lacking:
            usage = "tls_www_server" if cert == SERVER_CERT else "tls_www_client"
            names = f"cn = {host.host}"
            if cert == SERVER_CERT:
                names += f", ip_address or dns_name = {dest.migration_host or host.host}"
            steps.append(
                f"certtool --generate-privkey > {d}/{KEY_OF[cert]}; certtool "
                f"--generate-certificate --load-privkey {d}/{KEY_OF[cert]} "
                f"--load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem "
                f"--template t.info --outfile {d}/{cert} (t.info: {names}, {usage}, "
                "encryption_key, signing_key)"
            )
    return f"On {host.host} ({role}): " + "; ".join(steps) + f". See {DOCS}."


def _broken(t: TlsInputs) -> list[CheckResult]:
    """Files that are there but unusable: unreadable, not PEM, a key of another cert."""
    results = []
    for host, role, names in needed(t):
        for name in names:
            f = host.file(name)
            why = f.error
            if not why and name in KEY_OF:
                key = host.file(KEY_OF[name])
                if key.key_sha256 and f.certs and key.key_sha256 != f.certs[0].public_key_sha256:
                    why = f"it does not hold the key of {KEY_OF[name]}"
            if why:
                results.append(
                    bad(
                        "migrate-tls",
                        Verdict.BLOCKER,
                        f"{host.path(name)} on {host.host} ({role}) cannot be used: {why}.",
                        observed=why,
                        required=f"a PEM {'key' if name in KEY_OF.values() else 'certificate'}",
                        hint=create_hint(host, role, [name], dest=t.dest)
                        + " Or pass --tls off to migrate unencrypted knowingly.",
                        subject=role,
                    )
                )
    return results


def check_ca(t: TlsInputs) -> tuple[CheckResult, ...]:
    """Each side's certificate is signed by the CA the other side trusts."""
    src, dst = t.source, t.dest
    pairs = [(dst, SERVER_CERT, src, "the source's QEMU would refuse the destination")]
    if dst.verify_clients:
        pairs.append((src, CLIENT_CERT, dst, "the destination's QEMU would refuse the source"))
    results = []
    for holder, cert, truster, effect in pairs:
        f = holder.file(cert)
        if issued_by(f.pem, truster.file(CA).pem):
            continue
        ca = truster.file(CA).certs[0]
        results.append(
            bad(
                "tls-ca",
                Verdict.BLOCKER,
                f"{holder.path(cert)} on {holder.host} is issued by {f.certs[0].issuer}, "
                f"not by the CA {truster.host} trusts ({truster.path(CA)}: {ca.subject}): "
                f"{effect}.",
                observed=f"issuer {f.certs[0].issuer}",
                required=f"signed by {ca.subject}",
                hint=f"Use one CA for both hosts: copy the CA that signed {cert} to "
                f"{truster.path(CA)} on {truster.host}, or re-issue {cert} on {holder.host} "
                f"with that CA (certtool --generate-certificate --load-ca-certificate "
                f"ca-cert.pem --load-ca-privkey ca-key.pem ...). See {DOCS}.",
                subject=holder.host,
            )
        )
    if results:
        return tuple(results)
    ca = t.source.file(CA).certs[0]
    return (ok("tls-ca", f"both hosts trust one CA ({ca.subject})", observed=ca.subject),)


def check_name(t: TlsInputs) -> tuple[CheckResult, ...]:
    """The destination's certificate names the address the source's QEMU connects to."""
    dst = t.dest
    target = dst.migration_host or dst.host
    cert = dst.file(SERVER_CERT).certs[0]
    observed = f"certificate for {cert.names()}; source connects to {target}"
    if valid_for_host(cert, target):
        return (
            ok("tls-name", f"{dst.path(SERVER_CERT)} is valid for {target}", observed=observed),
        )
    return (
        bad(
            "tls-name",
            Verdict.BLOCKER,
            f"{dst.path(SERVER_CERT)} on {dst.host} is for {cert.names()}, but the source's "
            f"QEMU connects to {target} (the destination's migration_host, else its "
            "hostname): it would refuse the certificate.",
            observed=observed,
            required=f"subjectAltName {target}",
            hint=f"Re-issue it with {'ip_address' if _is_ip(target) else 'dns_name'} = "
            f"{target} in the certtool template (certtool --generate-certificate ... "
            f"--outfile {dst.path(SERVER_CERT)}), or set migration_host in {dst.host}'s "
            "qemu.conf to a name the certificate has.",
            subject="destination",
        ),
    )


def _is_ip(text: str) -> bool:
    return text.replace(".", "").isdigit() or ":" in text


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def check_expiry(t: TlsInputs) -> tuple[CheckResult, ...]:
    """No certificate used here has expired, is not yet valid, or expires within 7 days."""
    used = [(host, name) for host, _role, names in needed(t) for name in names if name in KEY_OF]
    used += [(t.source, CA), (t.dest, CA)]
    results = []
    soonest: tuple[float, str] | None = None
    for host, name in used:
        cert = host.file(name).certs[0]
        where = f"{host.path(name)} on {host.host}"
        left_s = cert.not_after_s - t.now_s
        if soonest is None or cert.not_after_s < soonest[0]:
            soonest = (cert.not_after_s, where)
        renew = f"Renew {where} (certtool --generate-certificate ... --outfile {host.path(name)})"
        if cert.not_before_s > t.now_s or left_s <= 0:
            state = "expired" if left_s <= 0 else "not valid yet"
            results.append(
                bad(
                    "tls-expiry",
                    Verdict.BLOCKER,
                    f"{where} is {state}: valid {_date(cert.not_before_s)} to "
                    f"{_date(cert.not_after_s)}; QEMU would refuse it.",
                    observed=state,
                    required="valid now",
                    hint=f"{renew}, or check the host's clock.",
                    subject=f"{host.host}:{name}",
                )
            )
        elif left_s < EXPIRY_WARNING_S:
            results.append(
                bad(
                    "tls-expiry",
                    Verdict.WARNING,
                    f"{where} expires in {left_s / 86400:.1f} days ({_date(cert.not_after_s)}).",
                    observed=f"{left_s / 86400:.1f} days left",
                    required=f">= {EXPIRY_WARNING_S // 86400} days left",
                    hint=f"{renew} before then.",
                    subject=f"{host.host}:{name}",
                )
            )
    if results or soonest is None:
        return tuple(results)
    first = f"first to expire: {soonest[1]}, {_date(soonest[0])}"
    return (ok("tls-expiry", f"every certificate is valid; {first}", observed=first),)

"""User mistakes against a real libvirt (the test driver): clear error, hint, exit code.

Each test gets its own driver URI from a file, because ``test:///default``
keeps state for the life of the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).parent / "data" / "driver.xml"
SOURCE = f"test://{DRIVER}"


def vmotion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libvirt_vmotion", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "\nhint: " in result.stderr
    for word in words:
        assert word in result.stderr


def test_unknown_domain_exits_8_with_hint() -> None:
    result = vmotion("migrate", "nosuch", "--from", SOURCE, "--to", "test:///default")
    assert_clean_error(result, 8, "No guest named 'nosuch'", "virsh -c")


def test_guest_not_running_exits_3() -> None:
    result = vmotion("migrate", "stopped01", "--from", SOURCE, "--to", "test:///default")
    assert_clean_error(result, 3, "shut off", "start stopped01")


def test_same_host_is_refused_before_anything_moves() -> None:
    result = vmotion("migrate", "web01", "--from", SOURCE, "--to", "test:///default")
    assert_clean_error(result, 3, "same host")


def test_unreachable_destination_exits_7() -> None:
    result = vmotion("migrate", "web01", "--from", SOURCE, "--to", "qemu+tcp://127.0.0.1:1/system")
    assert_clean_error(result, 7, "Cannot reach libvirt", "127.0.0.1:1")


def test_failure_with_json_prints_a_machine_readable_last_line() -> None:
    result = vmotion("migrate", "nosuch", "--from", SOURCE, "--to", "test:///default", "--json")
    assert result.returncode == 8
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["result"] == "failed"
    assert "nosuch" in last["error"]
    assert last["hint"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["migrate", "x", "--to", "not-a-uri"], "is not a libvirt URI"),
        (["migrate", "x", "--to", "test:///default", "--bandwidth", "0"], "greater than 0"),
        (["migrate", "x", "--to", "test:///default", "--max-downtime", "abc"], "whole number"),
        (["migrate", "x"], "--to"),
        (["migrate", "x", "--from", "test:///default", "--to", "test:///default"], "same URI"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = vmotion(*args)
    assert_clean_error(result, 2, message)


def test_binding_fallbacks_match_the_installed_binding_and_name_a_feature() -> None:
    import libvirt  # noqa: PLC0415  the real binding

    from libvirt_vmotion.adapters.virt import BINDING_FALLBACKS, binding_constant  # noqa: PLC0415
    from libvirt_vmotion.preflight.versions import FEATURES  # noqa: PLC0415

    features = {f.name for f in FEATURES}
    for name, (value, feature) in BINDING_FALLBACKS.items():
        assert feature in features
        if hasattr(libvirt, name):
            assert getattr(libvirt, name) == value
        assert binding_constant(name) == value


def test_tls_sets_libvirts_tls_flag_beside_the_disk_copy() -> None:
    import libvirt  # noqa: PLC0415  the real binding

    from libvirt_vmotion.adapters.virt import MigrationOptions, _stream_flags  # noqa: PLC0415

    params: dict[str, object] = {}
    flags = _stream_flags(MigrationOptions(tls=True, copy_disks=("vda",)), params)
    assert flags & libvirt.VIR_MIGRATE_TLS
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert not _stream_flags(MigrationOptions(), {}) & libvirt.VIR_MIGRATE_TLS


def test_a_tls_uri_whose_client_files_are_missing_names_them(tmp_path: Path) -> None:
    # libvirt reads the client's CA before it connects: no network is touched.
    uri = f"qemu+tls://127.0.0.1:1/system?pkipath={tmp_path}"
    result = vmotion("cancel", "g", "--from", uri)
    assert_clean_error(result, 7, f"{tmp_path}/cacert.pem", "pkipath", "servercert.pem")


def test_a_migration_stream_tls_failure_points_at_the_qemu_certificates() -> None:
    from libvirt_vmotion.adapters.virt import tls_failure_hint  # noqa: PLC0415

    detail = "operation failed: job 'migration out' failed: Certificate does not match the hostname"
    hint = tls_failure_hint(detail, uri="qemu+tcp://a/system", migrating=True)
    assert "server-cert.pem" in hint
    assert "migrate_tls_x509_cert_dir" in hint
    assert "--tls off" in hint
    assert not tls_failure_hint("no route to host", uri="qemu+tls://a/system", migrating=True)

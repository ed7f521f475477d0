"""The older-CPU host of the lab: its QEMU wrapper and how the holder mounts it (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from libvirt_vmotion.lab import hostconf
from libvirt_vmotion.lab.constants import HOST_A, HOST_B


def test_hostb_is_the_older_cpu_and_hosta_runs_qemu_as_is() -> None:
    assert HOST_B.tcg_cpu_without == ("pku",)
    assert hostconf.build_qemu_wrapper(HOST_A) is None
    wrapper = hostconf.build_qemu_wrapper(HOST_B)
    assert wrapper is not None
    assert wrapper.startswith("#!/bin/sh\n")
    assert f'exec {hostconf.QEMU_REAL_BINARY} -global max-x86_64-cpu.pku=off "$@"\n' in wrapper


def test_every_missing_feature_gets_its_own_global() -> None:
    host = dataclasses.replace(HOST_B, tcg_cpu_without=("pku", "avx2"))
    wrapper = hostconf.build_qemu_wrapper(host)
    assert wrapper is not None
    assert "-global max-x86_64-cpu.pku=off -global max-x86_64-cpu.avx2=off" in wrapper


@pytest.mark.parametrize("feature", ["", "pku=on", "pku; reboot", "PKU"])
def test_a_feature_that_is_no_property_name_is_refused(feature: str) -> None:
    host = dataclasses.replace(HOST_B, tcg_cpu_without=(feature,))
    with pytest.raises(ValueError, match="not a QEMU CPU property name"):
        hostconf.build_qemu_wrapper(host)


def test_the_holder_puts_the_wrapper_in_place_before_libvirtd_starts() -> None:
    paths = hostconf.host_paths(HOST_B)
    script = hostconf.build_holder_script(HOST_B, paths)
    real = f"mount -n --bind {hostconf.QEMU_BINARY} {hostconf.QEMU_REAL_BINARY}"
    over = f"mount -n --bind {paths.qemu_wrapper} {hostconf.QEMU_BINARY}"
    # /run (where the real binary's mount point lives) first, the real binary before
    # the wrapper hides it, all of it before libvirtd probes QEMU.
    assert script.index("/run\n") < script.index(real) < script.index(over)
    assert script.index(over) < script.index("libvirtd -d -l")
    assert "qemu-system-x86_64" not in hostconf.build_holder_script(
        HOST_A, hostconf.host_paths(HOST_A)
    )


def test_every_host_listens_for_tls_beside_tcp_and_points_qemu_at_its_certificates() -> None:
    conf = hostconf.build_libvirtd_conf(HOST_A)
    assert "listen_tls = 1\n" in conf
    assert "listen_tcp = 1\n" in conf
    assert 'tls_port = "16514"\n' in conf
    qemu = hostconf.build_qemu_conf(HOST_B)
    assert f'migrate_tls_x509_cert_dir = "{hostconf.QEMU_TLS_DIR}"\n' in qemu
    assert f'migration_host = "{HOST_B.addr}"\n' in qemu


def test_the_holder_binds_the_hosts_own_pki_over_etc_pki_before_libvirtd_starts() -> None:
    paths = hostconf.host_paths(HOST_A)
    script = hostconf.build_holder_script(HOST_A, paths)
    bind = f"mount -n --bind {paths.pki} /etc/pki"
    assert "/etc/pki" in script.splitlines()[3]  # the mount point is made first
    assert script.index(bind) < script.index("libvirtd -d -l")


def test_tls_uri_names_the_controllers_client_files() -> None:
    assert HOST_B.tls_uri.startswith(f"qemu+tls://{HOST_B.addr}/system?pkipath=/")
    assert HOST_B.tls_uri.endswith("/pki/client")

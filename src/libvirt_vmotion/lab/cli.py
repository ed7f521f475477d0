"""The ``vmotion lab ...`` commands.

I/O: drives the lab topology, the guest image and the lab guest; renders
their state. Needs root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from libvirt_vmotion.errors import ExitCode, UsageError, VmotionError
from libvirt_vmotion.lab import command_name, guestctl, topology
from libvirt_vmotion.lab.constants import (
    GUEST_ADDR,
    GUEST_NAME,
    HOST_A,
    HOST_B,
    HOST_BRIDGE,
    STATE_DIR,
    LabHost,
    host_by_name,
    lab_hosts,
)
from libvirt_vmotion.lab.guestdef import DiskMode, VirtType
from libvirt_vmotion.lab.image import GuestImage, ensure_guest_image

REPORT_DIR = STATE_DIR / "reports"


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201  command output


def _require_root() -> None:
    if os.geteuid() != 0:
        msg = "The lab needs root (it creates namespaces and runs libvirtd)."
        raise UsageError(msg, hint="Run the command as root (sudo).")


def _wrap_lab_errors(exc: Exception) -> VmotionError:
    return VmotionError(str(exc), hint="See 'vmotion lab status'; 'vmotion lab down' resets it.")


def run_lab_command(args: argparse.Namespace) -> int:
    """Dispatch ``vmotion lab <command>``."""
    _require_root()
    try:
        return _dispatch(args)
    except (topology.LabError, RuntimeError) as exc:
        raise _wrap_lab_errors(exc) from exc


def _dispatch(args: argparse.Namespace) -> int:  # noqa: PLR0911  one branch per subcommand
    command = args.lab_command
    if command == "up":
        _say(topology.up(log=_say, hosts=args.hosts).render())
        return ExitCode.OK
    if command == "down":
        topology.down()
        _say("lab removed")
        return ExitCode.OK
    if command == "status":
        status = topology.status()
        _say(status.render())
        return ExitCode.OK if status.healthy else ExitCode.ERROR
    if command == "exec":
        argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            msg = "lab exec needs a command."
            raise UsageError(msg, hint=f"e.g. vmotion lab exec -- virsh -c {HOST_A.uri} list")
        return guestctl.run_in_client(argv)
    if command == "image":
        image = ensure_guest_image(log=_say)
        _say(f"kernel {image.kernel}\ninitrd {image.initrd}\nrecipe {image.recipe_hash}")
        return ExitCode.OK
    if command == "demo":
        return _demo(args)
    if command == "storage":
        return _storage(args)
    return _guest(args)


def _storage(args: argparse.Namespace) -> int:
    from libvirt_vmotion.lab import storage  # noqa: PLC0415  pyroute2 only when used
    from libvirt_vmotion.lab.constants import (  # noqa: PLC0415
        SHARED_DIR,
        STORAGE_ADDR,
        STORAGE_NETNS,
    )

    if args.storage_command == "up":
        storage.up()
    state = "up" if storage.is_up() else "down"
    _say(
        f"shared storage: {state} (GlusterFS volume {storage.VOLUME} served from "
        f"{STORAGE_NETNS} at {STORAGE_ADDR}, mounted on both hosts at {SHARED_DIR})"
    )
    return ExitCode.OK if state == "up" else ExitCode.ERROR


def _check_setting(setting: str, value: str) -> None:
    """Refuse a bad workload setting here, before anything is sent to the guest."""
    valid = {
        "rate": (value.isdigit(), "a whole number of MiB/s, 0 for as fast as it can"),
        "wss": (value.isdigit() and int(value) > 0, "a whole number of MiB above 0"),
        "mode": (value in {"paced", "busy"}, "paced or busy"),
        "disk_rate": (value.isdigit(), "a whole number of KiB/s, 0 to stop writing"),
    }
    ok, expected = valid[setting]
    if not ok:
        msg = f"{setting} {value!r} is not valid: expected {expected}."
        raise UsageError(
            msg,
            hint=f"e.g. {command_name()} lab guest set {setting} 40"
            if setting != "mode"
            else f"e.g. {command_name()} lab guest set mode busy",
        )


def _start_guest_from_args(args: argparse.Namespace, host: LabHost, image: GuestImage) -> None:
    """Start the lab guest with the settings of ``lab guest start``/``lab demo``; wait for it."""
    guestctl.start_guest(
        host,
        image,
        memory_mib=args.memory_mib,
        wss_mib=args.wss_mib,
        rate_mib_s=args.rate_mib_s,
        mode=args.mode,
        virt_type=VirtType.KVM if args.kvm else VirtType.QEMU,
        disk=DiskMode(args.disk) if getattr(args, "disk", None) else None,
        disk_mib=getattr(args, "disk_mib", guestctl.DEFAULT_DISK_MIB),
        disk_kib_s=getattr(args, "disk_kib_s", guestctl.DEFAULT_DISK_KIB_S),
        name=getattr(args, "name", GUEST_NAME),
        bridge=getattr(args, "bridge", None) or HOST_BRIDGE,
    )
    if not getattr(args, "no_wait", False):
        guestctl.wait_for_workload(name=getattr(args, "name", GUEST_NAME))


def _guest(args: argparse.Namespace) -> int:
    command = args.guest_command
    name = args.name
    addr = guestctl.guest_addr(name)
    if command == "start":
        host = host_by_name(args.host)
        if host not in lab_hosts():
            msg = f"{host.name} is not up in this lab."
            raise UsageError(msg, hint=f"Add it: {command_name()} lab up --hosts 3")
        _start_guest_from_args(args, host, ensure_guest_image(log=_say))
        _say(f"{name} runs on {args.host}; workload answers at {addr}")
        return ExitCode.OK
    if command == "stop":
        guestctl.remove_guest(name)
        _say(f"{name} removed from every lab host")
        return ExitCode.OK
    if not guestctl.in_client_netns():
        # The guest's address is only reachable on the lab network.
        argv = ["lab", "guest", command, "--name", name]
        if command == "wait":
            argv += ["--timeout", f"{args.timeout:g}"]
        elif command == "set":
            argv += [args.setting, args.value]
        return guestctl.run_in_client(guestctl.self_command(*argv))
    from libvirt_vmotion.observe.workload import (  # noqa: PLC0415  lab network only
        query_status,
        send_command,
        wait_until_ready,
    )

    if command == "wait":
        wait_until_ready(addr, timeout_s=args.timeout)
        return ExitCode.OK
    if command == "set":
        _check_setting(args.setting, args.value)
        _say(json.dumps(send_command(addr, f"set {args.setting} {args.value}")))
        return ExitCode.OK
    for host, state in guestctl.find_guest(name):
        _say(f"{name}: {state} on {host.name}")
    _say(json.dumps(dataclasses.asdict(query_status(addr)), indent=2))
    return ExitCode.OK


def _demo(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    _say("== 1/4 guest image (built from Debian packages, cached)")
    image = ensure_guest_image(log=_say)
    _say("== 2/4 lab: switch, hosta, hostb, client namespaces with their own libvirtd")
    _say(topology.up(log=_say).render())
    _say(
        f"== 3/4 boot {GUEST_NAME} on hosta: {args.memory_mib} MiB RAM, workload rewrites "
        f"{args.wss_mib} MiB at {args.rate_mib_s} MiB/s ({args.mode}) and verifies every page"
    )
    _start_guest_from_args(args, HOST_A, image)
    time.sleep(3)  # let the workload build a dirty working set before we move it
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    report_file = REPORT_DIR / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    cmd = guestctl.self_command(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
        "--ping", GUEST_ADDR, "--workload", GUEST_ADDR, "--report-file", str(report_file),
    )  # fmt: skip
    _say("== 4/4 live migration hosta -> hostb, from the client namespace:")
    shown = " ".join(cmd[3:])
    _say(f"   {command_name()} lab exec -- vmotion {shown}")
    code = guestctl.run_in_client(cmd)
    if code != 0:
        return code
    prog = command_name()
    _say(
        f"\nDemo done in {time.monotonic() - t0:.0f} s. Report: {report_file}\n"
        "Look around:\n"
        f"  {prog} lab status\n"
        f"  {prog} lab guest status\n"
        f"  {prog} lab exec -- virsh -c {HOST_B.uri} list\n"
        f"  {prog} lab exec -- vmotion migrate {GUEST_NAME} "
        f"--from {HOST_B.uri} --to {HOST_A.uri} --ping {GUEST_ADDR} --workload {GUEST_ADDR}\n"
        "Tear down:\n"
        f"  {prog} lab down"
    )
    sys.stdout.flush()
    return ExitCode.OK

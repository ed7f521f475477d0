"""Trust-boundary findings of issue 12, each reproduced here against the real thing.

Every child Python we start runs isolated from the caller's working directory
and environment; what crosses from a URI, the domain XML, an agent's reply or
a history file is validated before it is used.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from libvirt_vmotion import __version__
from libvirt_vmotion.adapters.agent import AgentUnavailable, RemoteHost
from libvirt_vmotion.adapters.history import Completed, History
from libvirt_vmotion.cutover.bridge import op_bridge_facts, op_fdb_flush, op_fdb_query
from libvirt_vmotion.errors import UsageError, VmotionError
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.model import PastRun
from libvirt_vmotion.preflight.domxml import guest_facts, interface_name_problem
from libvirt_vmotion.preflight.linkrate import bound_switchover, learned_switchover
from libvirt_vmotion.reserve import hook as hooks
from libvirt_vmotion.reserve.hostops import op_host_facts
from libvirt_vmotion.reserve.store import ReservationStore
from libvirt_vmotion.storage import host as storage_host

AgentOp = Callable[[Mapping[str, object]], dict[str, object]]


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable directory holding a fake ``libvirt_vmotion`` package; we run from it.

    The fake package records that it ran (the marker file), as an attacker's
    code would run as root. Returns the marker's path.
    """
    marker = tmp_path / "PLANTED-CODE-RAN"
    fake = tmp_path / "libvirt_vmotion"
    fake.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("__init__.py", "__main__.py", "hooks.py"):
        (fake / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    return marker


def test_local_agent_ignores_a_package_planted_in_the_working_directory(planted: Path) -> None:
    reply = RemoteHost.for_uri("qemu:///system").call("hello")
    assert reply["version"]  # the real agent answered
    assert not planted.exists()


def test_remote_agent_command_line_ignores_the_remote_working_directory(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ssh that runs the remote command line here, in the planted directory (a
    # remote login whose home directory someone else can write to).
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec /bin/sh -c "$last"\n')
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("VMOTION_AGENT_SSH", str(fake_ssh))
    monkeypatch.setenv("VMOTION_AGENT_PYTHON", sys.executable)
    reply = RemoteHost.for_uri("qemu+tcp://kvm2/system").call("hello")
    assert reply["version"]
    assert not planted.exists()


def run_shim(shim: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shim), *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def test_hook_shim_ignores_a_package_planted_in_the_working_directory(
    planted: Path, tmp_path: Path
) -> None:
    shim = hooks.install(etc=tmp_path / "etc", python=sys.executable)
    result = run_shim(shim, "web01", "prepare", "begin", "-")
    assert result.returncode == 0, result.stderr
    assert not planted.exists()


def test_lab_and_bench_children_ignore_a_package_planted_in_the_working_directory(
    planted: Path,
) -> None:
    result = subprocess.run(
        guestctl.self_command("--help"), capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
    assert not planted.exists()


HOOK_OPERATIONS = list(hooks.HANDLED)
IGNORED_OPERATIONS = [("prepare", "begin"), ("start", "begin"), ("reconnect", "begin")]


def shim_with(tmp_path: Path, python: str) -> tuple[Path, Path]:
    """A shim as ``hooks install`` writes it, pointing at ``python``, logging into tmp_path."""
    log = tmp_path / "hook.log"
    shim = tmp_path / "50-libvirt-vmotion"
    shim.write_text(hooks.build_shim(python, log=log))
    shim.chmod(0o755)
    return shim, log


@pytest.mark.parametrize(("op", "subop"), HOOK_OPERATIONS)
def test_shim_fails_open_when_its_interpreter_is_gone(tmp_path: Path, op: str, subop: str) -> None:
    shim, log = shim_with(tmp_path, str(tmp_path / "removed-venv" / "bin" / "python"))
    result = run_shim(shim, "web01", op, subop, "-", stdin="<domain/>")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # libvirt keeps the XML unchanged
    (line,) = log.read_text().splitlines()
    assert f"hook skipped (web01 {op} {subop})" in line
    assert "removed-venv/bin/python is missing; reinstall: vmotion hooks install" in line


@pytest.mark.parametrize(("op", "subop"), HOOK_OPERATIONS)
def test_shim_fails_open_when_its_interpreter_lacks_the_package(
    tmp_path: Path, op: str, subop: str
) -> None:
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')  # no site-packages
    bare.chmod(0o755)
    shim, log = shim_with(tmp_path, str(bare))
    result = run_shim(shim, "web01", op, subop, "-", stdin="<domain/>")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    (line,) = log.read_text().splitlines()
    assert f"hook skipped (web01 {op} {subop})" in line
    assert "cannot import libvirt_vmotion.reserve.hook" in line


@pytest.mark.parametrize(("op", "subop"), IGNORED_OPERATIONS)
def test_shim_passes_operations_it_does_not_handle_without_starting_python(
    tmp_path: Path, op: str, subop: str
) -> None:
    marker = tmp_path / "python-ran"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    python.chmod(0o755)
    shim, log = shim_with(tmp_path, str(python))
    result = run_shim(shim, "web01", op, subop, "-", stdin="<domain/>")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert not marker.exists()  # libvirt's start was not held up by an interpreter
    assert not log.exists()


def test_shim_quotes_its_interpreter_path(tmp_path: Path) -> None:
    odd = tmp_path / "it's a venv; touch PWNED" / "bin"
    odd.mkdir(parents=True)
    python = odd / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    shim, log = shim_with(tmp_path, str(python))
    assert hooks.shim_python(shim.read_text()) == str(python)
    result = run_shim(shim, "web01", "prepare", "begin", "-", stdin="<domain/>")
    assert result.returncode == 0, result.stderr
    assert not log.exists()  # it ran our hook: nothing skipped
    assert not Path("/PWNED").exists()


def test_hooks_status_says_where_the_shim_points_and_whether_it_imports_us(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc"
    hooks.install(etc=etc, python=sys.executable)
    good = hooks.status(etc=etc)
    assert good.healthy
    assert (
        f"-> {sys.executable} -I (imports libvirt_vmotion.reserve.hook, {__version__})" in good.line
    )
    hooks.install(etc=etc, python=str(tmp_path / "gone" / "python"))
    gone = hooks.status(etc=etc)
    assert not gone.healthy
    assert "gone/python, which is missing" in gone.line
    assert "fails open" in gone.line
    assert "reinstall: vmotion hooks install" in gone.line
    hooks.install(etc=etc, python="/bin/true")
    not_python = hooks.status(etc=etc)
    assert not not_python.healthy
    assert "/bin/true, which cannot import libvirt_vmotion.reserve.hook" in not_python.line


def vmotion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "libvirt_vmotion", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_hooks_install_where_it_cannot_write_is_an_error_with_a_hint(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = vmotion("hooks", "install", "--etc", str(not_a_dir))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: cannot install the hook at {not_a_dir}/hooks/qemu.d/" in result.stderr
    assert "hint: Run it as root" in result.stderr


def test_install_tells_to_restart_the_daemon_that_reads_hooks(tmp_path: Path) -> None:
    result = vmotion("hooks", "install", "--etc", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "libvirtd (virtqemud with modular daemons)" in result.stdout


def test_veto_for_a_missing_disk_names_our_copy_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xml = (
        "<domain type='qemu'><name>web01</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<devices><disk type='file' device='disk'>"
        f"<source file='{tmp_path}/nowhere.qcow2'/><target dev='vda'/></disk></devices></domain>"
    )
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    assert hooks.on_migrate_begin("web01", xml, store=store, now_s=1.0) == 1
    vetoed = capsys.readouterr().err
    assert (
        "Hint: put it on storage both hosts share, or migrate with vmotion migrate --copy-storage"
        in vetoed
    )
    assert "--copy-storage-all" not in vetoed


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://-oProxyCommand=touch%20/tmp/PWNED@kvm2/system",  # an option as the user
        "qemu+ssh://root@-oProxyCommand=x/system",  # an option as the host
        "qemu+tcp://-oProxyCommand=x/system",
        "qemu+ssh://a%20b@kvm2/system",
        "qemu+ssh://root@kvm2%3Btouch/system",
    ],
)
def test_ssh_options_cannot_come_in_through_the_uri(uri: str) -> None:
    with pytest.raises(UsageError, match=r"is not a (user|host) name"):
        RemoteHost.for_uri(uri)


def test_ssh_gets_user_and_host_where_it_cannot_read_them_as_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VMOTION_AGENT_SSH", raising=False)
    host = RemoteHost.for_uri("qemu+ssh://ops-1@kvm2.example/system")
    assert host.prefix[-4:] == ("-l", "ops-1", "--", "kvm2.example")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (op_bridge_facts, {"bridges": ["br0"], "netns": "evil"}),
        (op_fdb_query, {"bridge": "br0", "macs": [], "netns": "evil"}),
        (op_fdb_flush, {"bridge": "br0", "macs": [], "netns": "evil"}),
    ],
)
def test_the_agent_refuses_a_network_namespace(op: AgentOp, args: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="does not take 'netns'"):
        op(args)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("br0", True),
        ("virbr-lab_1.2", True),
        ("a" * 15, True),
        ("a" * 16, False),  # IFNAMSIZ is 16 with the NUL
        ("", False),
        (".", False),
        ("..", False),
        ("../../tmp", False),
        ("br0:1", False),
        ("br 0", False),
        ("br\n0", False),
    ],
)
def test_interface_names_follow_the_kernels_rules(name: str, *, ok: bool) -> None:
    assert (interface_name_problem(name) is None) is ok


def test_hook_vetoes_a_bridge_name_that_walks_out_of_sysfs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bridge").mkdir()  # what /sys/class/net/<name>/bridge would find
    sneaky = f"../../..{tmp_path}"
    xml = (
        "<domain type='qemu'><name>web01</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<devices><interface type='bridge'><mac address='52:54:00:00:00:01'/>"
        f"<source bridge='{sneaky}'/></interface></devices></domain>"
    )
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    assert hooks.on_migrate_begin("web01", xml, store=store, now_s=1.0) == 1
    assert "is not an interface name" in capsys.readouterr().err
    assert store.list(now_s=2.0) == []


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (op_bridge_facts, {"bridges": ["../../etc"]}),
        (op_fdb_query, {"bridge": "../x", "macs": []}),
        (op_fdb_flush, {"bridge": "br0/..", "macs": []}),
        (op_host_facts, {"bridges": ["a/b"], "paths": []}),
    ],
)
def test_the_agent_refuses_a_path_as_a_bridge_name(op: AgentOp, args: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="interface name"):
        op(args)


def guest_with_memory(memory: str) -> str:
    return f"<domain type='qemu'><name>web01</name>{memory}<vcpu>1</vcpu><devices/></domain>"


@pytest.mark.parametrize(
    ("memory", "expected_bytes"),
    [
        ("<memory>1048576</memory>", 1 << 30),  # KiB by default
        ("<memory unit='KiB'>1048576</memory>", 1 << 30),
        ("<memory unit='GiB'>2</memory>", 2 << 30),
        ("<memory unit='G'>2</memory>", 2 << 30),
        ("<memory unit='GB'>2</memory>", 2 * 10**9),
        ("<memory unit='TiB'>1</memory>", 1 << 40),
        ("<memory unit='PiB'>1</memory>", 1 << 50),
        ("<memory unit='bytes'>4096</memory>", 4096),
    ],
)
def test_memory_units_are_libvirts(memory: str, expected_bytes: int) -> None:
    assert guest_facts(guest_with_memory(memory)).memory_bytes == expected_bytes


def test_an_unknown_memory_unit_is_an_error_not_kib() -> None:
    with pytest.raises(VmotionError, match=r"<memory unit='furlongs'> is not a unit libvirt knows"):
        guest_facts(guest_with_memory("<memory unit='furlongs'>4</memory>"))


def test_what_the_agent_creates_is_private_to_root(tmp_path: Path) -> None:
    disk = tmp_path / "web01.qcow2"
    placed = RemoteHost.for_uri("qemu:///system").call(
        "share-probe", {"token": "abc123", "paths": [str(disk)]}
    )["placed"]
    assert isinstance(placed, dict)
    marker = Path(placed[str(disk)])
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600


def a_completed_run() -> Completed:
    """One pre-copy run between hosts a and b, as the history stores it."""
    return Completed(
        source_uuid="a",
        dest_uuid="b",
        finished_s=1.0,
        cap_mib_s=None,
        data_bytes=100 << 20,
        elapsed_ms=2000,
        downtime_ms=50,
    )


def test_the_migration_history_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "libvirt-vmotion" / "history.db"
    run = a_completed_run()
    old = os.umask(0o022)
    try:
        assert History(path).record(run)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_qemu_img_that_hangs_is_an_error_not_a_hung_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hung = bin_dir / "qemu-img"
    hung.write_text("#!/bin/sh\nexec sleep 3600\n")  # storage that never answers
    hung.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(storage_host, "QEMU_IMG_TIMEOUT_S", 0.5)
    disk = {"path": str(tmp_path / "web01.qcow2"), "format": "qcow2", "capacity_bytes": 1 << 20}
    with pytest.raises(VmotionError, match=r"qemu-img did not create .*web01.qcow2 within 0.5 s"):
        storage_host.precreate([disk], allowed=[str(tmp_path)])


def agent_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> RemoteHost:
    """A remote agent whose 'ssh' runs ``script`` instead (the far end is not ours)."""
    far_end = tmp_path / "far-end"
    far_end.write_text(f"#!/bin/sh\n{script}\n")
    far_end.chmod(0o755)
    monkeypatch.setenv("VMOTION_AGENT_SSH", str(far_end))
    return RemoteHost.for_uri("qemu+tcp://kvm2/system")


def test_an_endless_agent_reply_is_cut_off_not_read_into_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = agent_answering(tmp_path, monkeypatch, "exec yes")
    with pytest.raises(AgentUnavailable, match=r"its reply passed 1 MiB; refused"):
        host.call("hello", timeout_s=60)


@pytest.mark.parametrize(
    ("reply", "what"),
    [
        ("[1, 2]", "its reply is a JSON list, not an object"),
        ('"ok"', "its reply is a JSON str, not an object"),
        ('{"ok": true, "result": [1]}', "its result is a JSON list, not an object"),
    ],
)
def test_an_agent_reply_that_is_not_an_object_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: str, what: str
) -> None:
    host = agent_answering(tmp_path, monkeypatch, f"echo '{reply}'")
    with pytest.raises(AgentUnavailable, match=what):
        host.call("hello")


def test_a_silent_agent_still_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = agent_answering(tmp_path, monkeypatch, "exec sleep 30")
    with pytest.raises(AgentUnavailable, match=r"timed out after 0\.5 seconds"):
        host.call("hello", timeout_s=0.5)


def past(*switchover_mib_s: float) -> list[PastRun]:
    return [PastRun(100.0, None, rate) for rate in switchover_mib_s]


def test_a_learned_switchover_rate_never_beats_the_link_measured_in_this_run() -> None:
    inflated = learned_switchover(past(40_000.0, 40_000.0))  # a history someone wrote into
    assert bound_switchover(inflated, link_mib_s=950.0) == 950.0
    assert bound_switchover(400.0, link_mib_s=950.0) == 400.0  # a real one is kept
    assert bound_switchover(None, link_mib_s=950.0) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5.0, 0.0, 1e9])
def test_implausible_switchover_rates_are_not_learned(bad: float) -> None:
    assert learned_switchover(past(bad)) is None
    assert learned_switchover(past(bad, 300.0)) == 300.0


def test_a_history_file_others_can_write_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    history = History(path)
    run = a_completed_run()
    assert history.record(run)
    assert len(history.runs("a", "b")) == 1
    path.chmod(0o666)
    assert history.runs("a", "b") == []
    assert "others can write it" in caplog.text
    path.chmod(0o600)
    tmp_path.chmod(0o777)
    try:
        assert history.runs("a", "b") == []
    finally:
        tmp_path.chmod(0o700)

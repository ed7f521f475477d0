"""The controller's guard on the source host: a job whose controller died ends at once.

I/O, host side. ``vmotion migrate`` starts it on the source host through the agent
(``agent guard``) before the migration, keeps its standard input open while it
steers, and writes ``done`` (or ``failed``) when it ends. End of input without
either means the controller is gone (SIGKILL, a crash, a cut ssh connection): a
peer-to-peer job then runs on in the source's libvirtd, unsteered, until libvirt's
keepalive ends it 60-75 s later while the destination holds an incoming QEMU and
its memory. The guard ends it instead, at once:

- pre-copy: abort the job; the guest keeps running on the source, the
  destination's QEMU stops and our hook there releases the reservation;
- post-copy: leave it (the guest already runs on the destination and part of its
  memory exists only there) and wait for it to finish;
- no job: nothing to do.

What it did is kept in ``STATE_DIR/<domain>.json`` for ``vmotion status``
(``/run/libvirt-vmotion/guards``, or ``$VMOTION_GUARD_DIR``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Hypervisor

STATE_DIR: Final = Path(os.environ.get("VMOTION_GUARD_DIR", "/run/libvirt-vmotion/guards"))
_POSTCOPY_POLL_S: Final = 1.0


class GuardState(StrEnum):
    """What the guard knows of its migration (the ``state`` of its record)."""

    STEERED = "steered"
    """The controller is alive and steering."""
    DONE = "done"
    """The controller ended the migration itself (landed or failed)."""
    ORPHAN_ABORTED = "orphan-aborted"
    """The controller died in pre-copy; the guard aborted the job (guest on the source)."""
    ORPHAN_POSTCOPY = "orphan-postcopy"
    """The controller died in post-copy; the guest finishes on the destination."""
    ORPHAN_FINISHED = "orphan-finished"
    """The orphaned post-copy job has ended."""
    ORPHAN_NO_JOB = "orphan-no-job"
    """The controller died when no job ran any more."""


def on_controller_lost(*, job_active: bool, in_postcopy: bool) -> GuardState:
    """What an orphaned migration becomes (pure).

    >>> on_controller_lost(job_active=True, in_postcopy=False)
    <GuardState.ORPHAN_ABORTED: 'orphan-aborted'>
    >>> on_controller_lost(job_active=True, in_postcopy=True)
    <GuardState.ORPHAN_POSTCOPY: 'orphan-postcopy'>
    """
    if not job_active:
        return GuardState.ORPHAN_NO_JOB
    return GuardState.ORPHAN_POSTCOPY if in_postcopy else GuardState.ORPHAN_ABORTED


@dataclass(frozen=True, slots=True)
class GuardArgs:
    """The guard's first input line."""

    domain: str
    controller: str
    libvirt_uri: str = "qemu:///system"
    budget_s: float = 300.0

    @classmethod
    def from_line(cls, line: str) -> GuardArgs:
        """Parse and check the JSON line (raises ValueError with what is wrong)."""
        data = json.loads(line)
        if not isinstance(data, dict) or not isinstance(data.get("domain"), str):
            msg = "guard arguments must be a JSON object with a 'domain' string"
            raise ValueError(msg)  # noqa: TRY004  a bad input line, not a bad type
        return cls(
            domain=data["domain"],
            controller=str(data.get("controller", "")),
            libvirt_uri=str(data.get("libvirt_uri", "qemu:///system")),
            budget_s=float(data.get("budget_s", 300.0)),
        )


def state_path(domain: str, state_dir: Path = STATE_DIR) -> Path:
    """Where the guard of ``domain`` keeps its record (a name libvirt accepts is safe)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in domain).lstrip(".")
    return state_dir / f"{safe or '_'}.json"


def _write(path: Path, args: GuardArgs, state: GuardState, **more: object) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "domain": args.domain,
        "controller": args.controller,
        "state": state.value,
        "at_s": time.time(),
        "guard_pid": os.getpid(),
        **more,
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out, sort_keys=True)
    tmp.replace(path)


def ignore_hangups() -> None:
    """Ignore SIGHUP and SIGINT: what the guard's own process does first.

    ssh closing the session sends SIGHUP, and a Ctrl-C at the controller's terminal
    is not the guard's; it must outlive both.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_guard(
    stdin: TextIO,
    *,
    open_host: Callable[[str], Hypervisor] | None = None,
    state_dir: Path = STATE_DIR,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Guard one migration until its controller says it is over, or is gone.

    Returns:
        The process exit code (0; 2 for unusable arguments).

    """
    try:
        args = GuardArgs.from_line(stdin.readline())
    except ValueError:
        return 2
    path = state_path(args.domain, state_dir)
    _write(path, args, GuardState.STEERED)
    for line in stdin:
        word = line.strip()
        if word in {"done", "failed"}:
            state = _ensure_no_precopy(args, open_host) if word == "failed" else None
            _write(path, args, GuardState.DONE, ended=word, action=state)
            return 0
    state = _ensure_no_precopy(args, open_host)
    _write(path, args, state)
    if state is GuardState.ORPHAN_POSTCOPY:
        _wait_postcopy(args, open_host, sleep)
        _write(path, args, GuardState.ORPHAN_FINISHED)
    return 0


def _open(open_host: Callable[[str], Hypervisor] | None, uri: str) -> Hypervisor:
    if open_host is not None:
        return open_host(uri)
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415  host side only

    return Hypervisor.open(uri)


def _ensure_no_precopy(
    args: GuardArgs, open_host: Callable[[str], Hypervisor] | None
) -> GuardState:
    """Abort the job if it is still in pre-copy; say what the migration became."""
    from libvirt_vmotion.errors import VmotionError  # noqa: PLC0415

    try:
        with _open(open_host, args.libvirt_uri) as host:
            guest = host.lookup(args.domain)
            active = guest.job_sample(now_s=time.monotonic()).is_active
            state = on_controller_lost(job_active=active, in_postcopy=guest.is_in_postcopy())
            if state is GuardState.ORPHAN_ABORTED:
                guest.abort_job()
            return state
    except VmotionError:
        return GuardState.ORPHAN_NO_JOB


def _wait_postcopy(
    args: GuardArgs,
    open_host: Callable[[str], Hypervisor] | None,
    sleep: Callable[[float], None],
) -> None:
    from libvirt_vmotion.errors import VmotionError  # noqa: PLC0415

    deadline = time.monotonic() + args.budget_s
    while time.monotonic() < deadline:
        try:
            with _open(open_host, args.libvirt_uri) as host:
                if not host.has_guest(args.domain):
                    return
                if not host.lookup(args.domain).job_sample(now_s=time.monotonic()).is_active:
                    return
        except VmotionError:
            return
        sleep(_POSTCOPY_POLL_S)


def read_state(domain: str, state_dir: Path = STATE_DIR) -> dict[str, object]:
    """The guard's record for ``domain`` (empty when none was kept)."""
    try:
        data = json.loads(state_path(domain, state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def op_guard_state(args: dict[str, object]) -> dict[str, object]:
    """Agent op ``guard-state``: the guard's record for ``domain`` on this host."""
    return read_state(str(args.get("domain", "")))

"""Exception tree of libvirt-vmotion.

Pure: no I/O.

Every error carries a ``hint`` that tells the user what to do, and maps to one
process exit code, so scripts can tell the cases apart::

    VmotionError                  .hint, .exit_code           (1)
    ├── UsageError                bad arguments or config     (2)
    ├── PreflightFailed           guest cannot go there now   (3)
    │   └── DomainNotRunning      live migration needs it up  (3)
    ├── ReservationError          destination cannot hold it  (4)
    ├── MigrationAborted          source still runs the guest (5)
    ├── AbortRefused              post-copy started: no abort (1)
    ├── CutoverFailed             where the guest is: unsure  (6)
    ├── ConnectionFailed          a hypervisor is unreachable (7)
    ├── DomainNotFound            no such guest there         (8)
    └── HypervisorError           any other libvirt failure   (1)
        └── Unsupported           the hypervisor lacks a feature

Lower-layer errors (``libvirt.libvirtError``) are translated into these at one
boundary, ``virt.translating_errors``; nothing above it sees a libvirtError.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``vmotion`` command."""

    OK = 0
    ERROR = 1
    USAGE = 2
    PREFLIGHT = 3
    RESERVATION = 4
    ABORTED = 5
    CUTOVER_UNCERTAIN = 6
    CONNECTION = 7
    NOT_FOUND = 8


class VmotionError(Exception):
    """Base of every error this package raises on purpose.

    Args:
        message: what failed, observed vs required, where.
        hint: what the user should do about it.

    """

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VmotionError):
    """The user's arguments or configuration are invalid; nothing was changed."""

    exit_code = ExitCode.USAGE


class PreflightFailed(VmotionError):
    """A check before migrating found a blocker; nothing was changed.

    Attributes:
        blockers: the blocking checks in their JSON form (name, verdict,
            message, observed, required, hint), for the failure report.

    """

    exit_code = ExitCode.PREFLIGHT

    def __init__(
        self, message: str, *, hint: str = "", blockers: tuple[Mapping[str, object], ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.blockers = blockers


class DomainNotRunning(PreflightFailed):
    """The guest is not running, so it cannot be live-migrated."""


class ReservationError(VmotionError):
    """The destination could not reserve what the guest needs."""

    exit_code = ExitCode.RESERVATION


class MigrationAborted(VmotionError):
    """The migration did not complete; the guest still runs on the source."""

    exit_code = ExitCode.ABORTED


class AbortRefused(VmotionError):
    """Cancel refused: the migration is in post-copy and must finish."""


class CutoverFailed(VmotionError):
    """Something failed after switchover: the message says where the guest is."""

    exit_code = ExitCode.CUTOVER_UNCERTAIN


class ConnectionFailed(VmotionError):
    """A libvirt connection could not be opened or broke."""

    exit_code = ExitCode.CONNECTION


class DomainNotFound(VmotionError):
    """No guest of that name, UUID or ID on that host."""

    exit_code = ExitCode.NOT_FOUND


class HypervisorError(VmotionError):
    """libvirt reported an error we have no more specific type for.

    Attributes:
        code: libvirt's error code (``virErrorNumber``), or -1.

    """

    def __init__(self, message: str, *, hint: str = "", code: int = -1) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class Unsupported(HypervisorError):
    """The hypervisor does not support an operation we asked for."""

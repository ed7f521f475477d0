"""What happens to a migration besides its job statistics: events, as data.

Pure: no I/O, no clock, no logging. ``virt.py`` turns libvirt's domain events
(MIGRATION_ITERATION, JOB_COMPLETED, LIFECYCLE post-copy reasons) into these;
the driver adds the user's cancel requests and the end of the migrate call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    """Kinds of migration events the controller reacts to."""

    ITERATION = "iteration"
    POSTCOPY_STARTED = "postcopy-started"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RESUMED = "postcopy-resumed"
    JOB_COMPLETED = "job-completed"
    JOB_FAILED = "job-failed"
    CANCEL_REQUESTED = "cancel-requested"


@dataclass(frozen=True, slots=True)
class MigrationEvent:
    """One event, stamped with the monotonic time the driver received it.

    Attributes:
        kind: what happened.
        now_s: when (monotonic seconds, same clock as the samples).
        iteration: the memory iteration for ITERATION events, else 0.
        detail: free text (libvirt's reason, an error message).

    """

    kind: EventKind
    now_s: float
    iteration: int = 0
    detail: str = ""

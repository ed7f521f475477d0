"""Protocols the migration driver talks through.

Pure: declarations only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from libvirt_vmotion.model import JobSample


class Observer(Protocol):
    """Something that watches the guest from outside during a migration.

    The driver starts every observer before the migration begins and stops it
    after the guest has landed (or the migration failed); what ``stop`` returns
    becomes a section of the report, under ``name``.
    """

    name: str

    def start(self) -> None:
        """Begin observing (non-blocking)."""

    def stop(self) -> Mapping[str, object]:
        """Stop observing and return the figures, JSON-serializable."""
        ...


class SampleSink(Protocol):
    """Receives every job sample as it is read (progress display, logging)."""

    def __call__(self, sample: JobSample) -> None:
        """Take one sample."""


class PrepareRescue(Protocol):
    """Ends a destination's prepare step that hangs (``converge.prepare``)."""

    def free_stuck_prepare(self, domain: str, *, waited_s: float) -> tuple[bool, str]:
        """End the incoming guest's process if it never became QEMU: (killed, what was done)."""
        ...

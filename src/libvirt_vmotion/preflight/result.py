"""Pre-flight results: one verdict per finding, and the builders every check uses.

Pure: no I/O, no clock, no logging.

Verdicts: ``ok``; ``warning`` (it may work, or we could not tell: says why);
``blocker`` (it cannot work; nothing is started). Every result says what was
observed and what is required, with units, and what to do. A check that compares
quantities also gives them as numbers (``observed_value``, ``required_value``, in
``unit``), so a program need not parse "3.1 GiB free".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from libvirt_vmotion.model import MIB

GIB: Final = 1024 * MIB


class Unit(StrEnum):
    """The unit of a result's ``observed_value`` and ``required_value``."""

    BYTES = "bytes"
    VCPUS = "vcpus"
    SLOTS = "slots"
    VERSION = "version"
    """libvirt's encoding: major * 1,000,000 + minor * 1,000 + micro (10.0.2 is 10000002)."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """What a check compared, as numbers: observed against required, in one unit.

    Either side may be unknown (``None``): a warning that could not read the
    destination still says what it takes.
    """

    unit: Unit
    observed: int | None = None
    required: int | None = None


class Verdict(StrEnum):
    """Outcome of one check, in increasing severity."""

    OK = "ok"
    WARNING = "warning"
    BLOCKER = "blocker"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's finding.

    Attributes:
        name: stable kebab-case check name (what ``--skip-check`` takes).
        verdict: ok, warning or blocker.
        message: what was found, where.
        observed: what we saw, with units ("3.1 GiB free").
        required: what it takes, with units ("4.3 GiB").
        hint: what to do about it (empty when ok).
        subject: the NIC, disk or feature a per-item check is about.
        skipped: the user overrode this check; it never blocks.
        quantity: the compared figures as numbers, for checks that compare
            quantities (memory, vCPUs, slots, MTU, versions, disk space).
        host: the host a check on one of the two hosts judged (the network
            pre-flight's bridge verdicts); empty for the others. ``netcheck``
            reports it; ``check`` shows it as ``observed`` (``to_dict`` keeps the
            check report's keys).

    """

    name: str
    verdict: Verdict
    message: str
    observed: str = ""
    required: str = ""
    hint: str = ""
    subject: str = ""
    skipped: bool = False
    quantity: Quantity | None = None
    host: str = ""

    @property
    def blocks(self) -> bool:
        """True if this result stops the migration."""
        return self.verdict is Verdict.BLOCKER and not self.skipped

    def to_dict(self) -> dict[str, object]:
        """JSON form (stable keys); the numeric ones are null when nothing was compared."""
        q = self.quantity
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "message": self.message,
            "observed": self.observed,
            "required": self.required,
            "hint": self.hint,
            "subject": self.subject,
            "skipped": self.skipped,
            "observed_value": None if q is None else q.observed,
            "required_value": None if q is None else q.required,
            "unit": None if q is None else q.unit.value,
        }


def format_bytes(size: int) -> str:
    """Human size with binary units: ``3.1 GiB``, ``640 MiB``."""
    if abs(size) >= GIB:
        return f"{size / GIB:.1f} GiB"
    return f"{size / MIB:.0f} MiB"


def skip_hint(name: str) -> str:
    """The override a hint ends with: ``(skip: --skip-check NAME)``."""
    return f"(skip: --skip-check {name})"


def ok(  # noqa: PLR0913  a result's fields, keyword-only
    name: str,
    message: str,
    *,
    observed: str = "",
    required: str = "",
    subject: str = "",
    quantity: Quantity | None = None,
) -> CheckResult:
    """A passing result (no hint)."""
    return CheckResult(
        name=name,
        verdict=Verdict.OK,
        message=message,
        observed=observed,
        required=required,
        subject=subject,
        quantity=quantity,
    )


def bad(  # noqa: PLR0913  a result's fields, keyword-only
    name: str,
    verdict: Verdict,
    message: str,
    *,
    hint: str,
    observed: str = "",
    required: str = "",
    subject: str = "",
    quantity: Quantity | None = None,
) -> CheckResult:
    """A warning or blocker; ``hint`` gets the ``--skip-check`` override appended."""
    return CheckResult(
        name=name,
        verdict=verdict,
        message=message,
        observed=observed,
        required=required,
        hint=f"{hint} {skip_hint(name)}".strip(),
        subject=subject,
        quantity=quantity,
    )

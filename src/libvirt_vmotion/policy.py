"""The user's migration budget and escalation schedule, as typed data.

Pure: no I/O, no clock, no logging (``load_policy_toml`` only parses text it is
given). A policy states what the convergence controller may do: how long the
guest may pause (downtime), how long the whole move may take, how hard the
guest may be slowed (CPU throttle), whether post-copy is allowed, and the
bandwidth cap. ``__post_init__`` validates and its messages name the field.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Final

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import MeasuredContext

DEFAULT_INITIAL_DOWNTIME_MS: Final = 30
DEFAULT_MAX_DOWNTIME_MS: Final = 500
DEFAULT_DOWNTIME_STEPS: Final = 5


@dataclass(frozen=True, slots=True)
class DowntimeStep:
    """One rung of the downtime ladder: the pause QEMU may plan for."""

    downtime_ms: int


def exponential_downtime(*, initial_ms: int, max_ms: int, steps: int) -> tuple[DowntimeStep, ...]:
    """A ladder from ``initial_ms`` to ``max_ms`` with a constant ratio (vdsm-style).

    Worked table for ``initial_ms=30, max_ms=500, steps=5``::

        step  1    2    3    4    5
        ms    30   60   122  247  500

    Args:
        initial_ms: first (tightest) downtime, > 0.
        max_ms: last downtime, the budget, >= initial_ms.
        steps: number of rungs, >= 1 (1 means just ``max_ms``).

    Returns:
        Non-decreasing steps, never zero, ending exactly at ``max_ms``.

    Raises:
        UsageError: a bad argument (named in the message).

    """
    if initial_ms <= 0 or max_ms < initial_ms or steps < 1:
        msg = f"downtime ladder needs 0 < initial ({initial_ms}) <= max ({max_ms}), steps >= 1"
        raise UsageError(msg, hint="Check --initial-downtime, --max-downtime and the policy file.")
    if steps == 1:
        return (DowntimeStep(max_ms),)
    ratio = (max_ms / initial_ms) ** (1 / (steps - 1))
    values = [max(1, math.floor(initial_ms * ratio**i)) for i in range(steps - 1)] + [max_ms]
    return tuple(DowntimeStep(v) for v in values)


@dataclass(frozen=True, slots=True)
class MigrationPolicy:
    """The budget and the escalation allowed to meet it.

    Escalation order, each taken only when the rounds show it is needed:
    downtime ladder, then CPU throttle (if ``max_throttle_percent`` > 0), then
    post-copy (if ``allow_postcopy``), then abort.

    Attributes:
        downtime_schedule: the downtime ladder, tight first; its last step is
            the downtime budget.
        max_duration_s: total time budget; pre-copy past it aborts.
        stall_rounds: rounds without a new minimum of remaining data that
            count as a stall (escalate).
        max_throttle_percent: the most the guest's vCPUs may be slowed
            (auto-converge); 0 forbids throttling.
        allow_postcopy: whether post-copy may be the last escalation.
        postcopy_after_fraction: share of ``max_duration_s`` after which the
            controller goes to post-copy (if allowed) whatever the ladder says,
            so post-copy has time left to finish.
        bandwidth_mib_s: migration bandwidth cap, None for unlimited.
        postcopy_resume_wait_s: how long to keep retrying post-copy recovery
            after the link broke.
        postcopy_stall_s: post-copy with no bytes moving for this long counts
            as a broken link (the controller then waits for it, or pauses it).
        postcopy_pause_on_stall: pause a stalled post-copy so it can be resumed
            over a fresh connection (POSTCOPY_RESUME). Off by default: a short
            outage is ridden out by TCP on the same connection, and libvirt
            11.3's destination libvirtd crashes on POSTCOPY_RESUME (lab,
            2026-11), after which the guest cannot be recovered.
        xbzrle: enable XBZRLE compression of re-sent pages.
        parallel_connections: multifd streams (0 = off).
        postcopy_bandwidth_mib_s: background transfer cap once in post-copy,
            None for unlimited (QEMU does not apply ``bandwidth_mib_s`` there;
            pages the guest faults on are still sent first).
        switchover_bandwidth_mib_s: the user's own figure for the rate of the
            final, unthrottled round (``--switchover-bandwidth``), None to use what
            was learned. Only an override: the rate the controller uses is
            decided once, in ``converge.machine.build_context``, and lives in the
            ``MeasuredContext`` with the other measurements.

    """

    downtime_schedule: tuple[DowntimeStep, ...] = field(
        default_factory=lambda: exponential_downtime(
            initial_ms=DEFAULT_INITIAL_DOWNTIME_MS,
            max_ms=DEFAULT_MAX_DOWNTIME_MS,
            steps=DEFAULT_DOWNTIME_STEPS,
        )
    )
    max_duration_s: float = 300.0
    stall_rounds: int = 2
    max_throttle_percent: int = 80
    allow_postcopy: bool = True
    postcopy_after_fraction: float = 0.5
    bandwidth_mib_s: int | None = None
    postcopy_resume_wait_s: float = 120.0
    postcopy_stall_s: float = 10.0
    xbzrle: bool = False
    parallel_connections: int = 0
    postcopy_bandwidth_mib_s: int | None = None
    postcopy_pause_on_stall: bool = False
    switchover_bandwidth_mib_s: float | None = None

    def __post_init__(self) -> None:  # noqa: C901  one check per field, flat
        """Validate every field; the message names the field and the bad value."""
        problems: list[str] = []
        ladder = [s.downtime_ms for s in self.downtime_schedule]
        if not ladder:
            problems.append("downtime_schedule is empty")
        elif any(v <= 0 for v in ladder) or ladder != sorted(ladder):
            problems.append(f"downtime_schedule must be positive and non-decreasing, got {ladder}")
        if self.max_duration_s <= 0:
            problems.append(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.stall_rounds < 1:
            problems.append(f"stall_rounds must be >= 1, got {self.stall_rounds}")
        if not 0 <= self.max_throttle_percent <= 99:
            problems.append(f"max_throttle_percent must be 0..99, got {self.max_throttle_percent}")
        if not 0 < self.postcopy_after_fraction <= 1:
            problems.append(
                f"postcopy_after_fraction must be in (0, 1], got {self.postcopy_after_fraction}"
            )
        if self.bandwidth_mib_s is not None and self.bandwidth_mib_s <= 0:
            problems.append(f"bandwidth_mib_s must be > 0, got {self.bandwidth_mib_s}")
        if self.postcopy_bandwidth_mib_s is not None and self.postcopy_bandwidth_mib_s <= 0:
            problems.append(
                f"postcopy_bandwidth_mib_s must be > 0, got {self.postcopy_bandwidth_mib_s}"
            )
        sw = self.switchover_bandwidth_mib_s
        if sw is not None and not (math.isfinite(sw) and sw > 0):
            problems.append(f"switchover_bandwidth_mib_s must be a finite number > 0, got {sw}")
        if self.postcopy_resume_wait_s < 0 or self.postcopy_stall_s <= 0:
            problems.append("postcopy_resume_wait_s must be >= 0 and postcopy_stall_s > 0")
        if self.parallel_connections < 0:
            problems.append(f"parallel_connections must be >= 0, got {self.parallel_connections}")
        if problems:
            msg = "Invalid migration policy: " + "; ".join(problems) + "."
            raise UsageError(msg, hint="Fix the policy file or the command-line flags.")

    @property
    def max_downtime_ms(self) -> int:
        """The downtime budget: the last rung of the ladder."""
        return self.downtime_schedule[-1].downtime_ms

    @property
    def initial_downtime_ms(self) -> int:
        """The first, tightest rung."""
        return self.downtime_schedule[0].downtime_ms

    @property
    def allows_throttle(self) -> bool:
        """True if the guest may be slowed down."""
        return self.max_throttle_percent > 0

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable form, for the report."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["downtime_schedule"] = [s.downtime_ms for s in self.downtime_schedule]
        return out


_SCALAR_FIELDS: Final = {
    "max_duration_s": float,
    "stall_rounds": int,
    "max_throttle_percent": int,
    "allow_postcopy": bool,
    "postcopy_after_fraction": float,
    "bandwidth_mib_s": int,
    "postcopy_resume_wait_s": float,
    "postcopy_stall_s": float,
    "xbzrle": bool,
    "parallel_connections": int,
    "postcopy_bandwidth_mib_s": int,
    "postcopy_pause_on_stall": bool,
    "switchover_bandwidth_mib_s": float,
}
"""The settings a policy file or ``build_policy`` may give, with their types."""
_MEASUREMENTS: Final = frozenset(
    {f.name for f in fields(MeasuredContext)}
    | {"qemu_knows_switchover_rate", "preflight_dirty_mib_s", "postcopy_after_first_pass"}
)
"""Names of measured facts (``MeasuredContext``): refused with their own message."""


def _unknown_setting(key: str, *, source: str) -> UsageError:
    known = ", ".join(sorted(_SCALAR_FIELDS))
    if key in _MEASUREMENTS:
        msg = (
            f"{source}: {key!r} is a measurement, not a setting: vmotion measures it "
            "(pre-flight, earlier migrations) and a policy cannot declare it."
        )
        return UsageError(msg, hint=f"Remove it. Settings a policy may give: {known}.")
    msg = f"{source}: unknown setting {key!r}."
    return UsageError(msg, hint=f"Known settings: {known}.")


def build_policy(
    base: MigrationPolicy | None = None,
    *,
    initial_downtime_ms: int | None = None,
    max_downtime_ms: int | None = None,
    downtime_steps: int | None = None,
    overrides: Mapping[str, object] | None = None,
) -> MigrationPolicy:
    """Derive a policy from ``base`` with a new ladder and/or scalar overrides.

    Args:
        base: starting policy (default: ``MigrationPolicy()``).
        initial_downtime_ms: first rung of a rebuilt ladder.
        max_downtime_ms: last rung (the budget) of a rebuilt ladder.
        downtime_steps: rungs in a rebuilt ladder.
        overrides: scalar fields by name (values already typed); None values
            are ignored.

    Returns:
        The validated policy.

    Raises:
        UsageError: an unknown field or a bad value.

    """
    policy = base or MigrationPolicy()
    changes: dict[str, object] = {}
    for key, value in (overrides or {}).items():
        if key not in _SCALAR_FIELDS:
            raise _unknown_setting(key, source="policy")
        if value is not None:
            changes[key] = value
    if any(v is not None for v in (initial_downtime_ms, max_downtime_ms, downtime_steps)):
        max_ms = max_downtime_ms or policy.max_downtime_ms
        initial = initial_downtime_ms or min(policy.initial_downtime_ms, max_ms)
        steps = downtime_steps or len(policy.downtime_schedule)
        changes["downtime_schedule"] = exponential_downtime(
            initial_ms=initial, max_ms=max_ms, steps=steps
        )
    return replace(policy, **changes)  # type: ignore[arg-type]


def load_policy_toml(text: str, *, source: str = "policy file") -> MigrationPolicy:
    """Parse a policy from TOML text.

    Example::

        max_duration_s = 120
        allow_postcopy = false
        [downtime]
        initial_ms = 20
        max_ms = 300
        steps = 4

    Raises:
        UsageError: invalid TOML, unknown keys, wrong types or bad values.

    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source} is not valid TOML: {exc}"
        raise UsageError(msg, hint="Fix the syntax (see the README's policy example).") from exc
    downtime = data.pop("downtime", {})
    if not isinstance(downtime, dict) or set(downtime) - {"initial_ms", "max_ms", "steps"}:
        msg = f"{source}: [downtime] takes initial_ms, max_ms and steps, got {downtime!r}"
        raise UsageError(msg, hint="See the README's policy example.")
    overrides: dict[str, object] = {}
    for key, value in data.items():
        kind = _SCALAR_FIELDS.get(key)
        if kind is None:
            raise _unknown_setting(key, source=source)
        ok = isinstance(value, bool) if kind is bool else isinstance(value, int | float)
        if not ok or (kind is int and not isinstance(value, int)):
            msg = f"{source}: {key} must be a {kind.__name__}, got {value!r}"
            raise UsageError(msg, hint="Fix the value's type in the policy file.")
        overrides[key] = kind(value)
    for key in ("initial_ms", "max_ms", "steps"):
        if key in downtime and not isinstance(downtime[key], int):
            msg = f"{source}: downtime.{key} must be a whole number, got {downtime[key]!r}"
            raise UsageError(msg, hint="Write e.g. max_ms = 300.")
    return build_policy(
        initial_downtime_ms=downtime.get("initial_ms"),
        max_downtime_ms=downtime.get("max_ms"),
        downtime_steps=downtime.get("steps"),
        overrides=overrides,
    )

"""The user's migration budget and escalation schedule, as typed data.

Pure: no I/O, no clock, no logging (``load_policy_toml`` only parses text it is
given). A policy states what the convergence controller may do: how long the
guest may pause (downtime), how long the whole move may take, how hard the
guest may be slowed (CPU throttle), whether post-copy is allowed, and the
bandwidth cap. ``__post_init__`` validates and its messages name the field.
"""

from __future__ import annotations

import math
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Final

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import Compression, MeasuredContext, TlsMode

DEFAULT_INITIAL_DOWNTIME_MS: Final = 30
DEFAULT_MAX_DOWNTIME_MS: Final = 500
DEFAULT_DOWNTIME_STEPS: Final = 5

DOWNTIME_LIMIT_MS: Final = 60_000
"""Largest ``--max-downtime``/``--initial-downtime``: a guest paused a minute is not a
live migration (its TCP peers and watchdogs give up), and a bigger figure is a unit
mistake (seconds typed as ms). QEMU would take it, so we refuse it when parsing."""
TIMEOUT_LIMIT_S: Final = 7 * 86_400
"""Largest ``--timeout`` (7 days): a reservation and an announcer wait as long as it."""


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
        prepare_timeout_s: how long libvirt's prepare step on the destination
            (its QEMU starting, nothing sent yet) may take; past it the migration
            is aborted and the half-started incoming process freed.
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
        compression: zstd over multifd streams (``auto``: when the forecast finds
            the link is the limit and pre-copy converges; ``zstd``; ``none``).
        tls: encrypt the migration (``auto``: where both hosts can; ``require``;
            ``off``). Pre-flight turns it into the request's ``tls`` from both
            hosts' certificates (``preflight.tls``).

    """

    downtime_schedule: tuple[DowntimeStep, ...] = field(
        default_factory=lambda: exponential_downtime(
            initial_ms=DEFAULT_INITIAL_DOWNTIME_MS,
            max_ms=DEFAULT_MAX_DOWNTIME_MS,
            steps=DEFAULT_DOWNTIME_STEPS,
        )
    )
    max_duration_s: float = 300.0
    prepare_timeout_s: float = 120.0
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
    tls: TlsMode = TlsMode.AUTO
    compression: Compression = Compression.AUTO

    def __post_init__(self) -> None:  # noqa: C901, PLR0912  one check per field, flat
        """Validate every field; the message names the field and the bad value."""
        problems: list[str] = []
        ladder = [s.downtime_ms for s in self.downtime_schedule]
        if not ladder:
            problems.append("downtime_schedule is empty")
        elif any(v <= 0 for v in ladder) or ladder != sorted(ladder):
            problems.append(f"downtime_schedule must be positive and non-decreasing, got {ladder}")
        if self.max_duration_s <= 0:
            problems.append(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if not (math.isfinite(self.prepare_timeout_s) and self.prepare_timeout_s > 0):
            problems.append(f"prepare_timeout_s must be > 0, got {self.prepare_timeout_s}")
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
        if self.xbzrle and self.compression is Compression.ZSTD:
            problems.append("xbzrle and compression zstd exclude each other (choose one)")
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


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """One setting a user may give: the same name in a policy file and as a flag.

    Attributes:
        key: the policy file's key and the flag's name (``max-throttle`` is
            ``max-throttle = 80`` in the file and ``--max-throttle 80``).
        field: the ``MigrationPolicy`` field it sets ("" for the downtime
            ladder's three keys, which build ``downtime_schedule``).
        kind: ``int``, ``float``, ``bool`` or a ``StrEnum`` (one of its values).
        expected: the value allowed, in words that read after "expected".
        low: smallest value allowed (None: no bound).
        high: largest value allowed (None: no bound).
        above_low: ``low`` itself is not allowed (a value must exceed it).
        over_high: words for a value above ``high``, when ``expected`` does not
            name the bound (``at most 60000 (1 minute)``): only an oversized
            value's message carries them.
        metavar: the unit, as shown in help (``MS``, ``SECONDS``, ``MIB_S``).
        help: what it does (the default is appended from ``MigrationPolicy()``).
        flag: also a command-line flag (``False``: policy file only).

    """

    key: str
    field: str
    kind: type
    expected: str
    low: float | None = None
    high: float | None = None
    above_low: bool = False
    over_high: str = ""
    metavar: str = ""
    help: str = ""
    flag: bool = True

    def problem(self, value: object) -> str:
        """What is wrong with ``value`` for this key (typed already), or ""."""
        if self.kind is bool:
            return "" if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if self.is_choice:
            allowed = {str(v) for v in self.kind}  # type: ignore[attr-defined]  # a StrEnum
            ok = isinstance(value, str) and value in allowed
            return "" if ok else f"expected {self.expected}, got {value!r}"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.kind is int and not isinstance(value, int)):
            return f"expected {self.expected}, got {value!r}"
        v = float(value)  # type: ignore[arg-type]  # a number, checked above
        too_low = self.low is not None and (v <= self.low if self.above_low else v < self.low)
        too_high = self.high is not None and v > self.high  # inf too
        if not math.isfinite(v) or too_low or too_high:
            return f"expected {self._expected_for(v)}, got {value!r}"
        return ""

    def _expected_for(self, value: float) -> str:
        """The expected value in words; with the upper bound for a value above it."""
        if self.over_high and self.high is not None and value > self.high:
            return f"{self.expected}, {self.over_high}"
        return self.expected

    @property
    def is_choice(self) -> bool:
        """True for a key whose value is one of a ``StrEnum``'s words (``tls``)."""
        return isinstance(self.kind, type) and issubclass(self.kind, StrEnum)

    def parse(self, text: str) -> object:
        """The value of ``text`` as typed on the command line.

        Raises:
            ValueError: the message says what was expected and what was given.

        """
        try:
            value: object = self.kind(text)
        except ValueError:
            msg = f"expected {self.expected}, got {text!r}"
            raise ValueError(msg) from None
        if self.problem(value):
            wanted = self._expected_for(float(value))  # type: ignore[arg-type]  # int or float
            msg = f"expected {wanted}, got {text!r}"
            raise ValueError(msg)
        return value


_LADDER_KEYS: Final = ("initial-downtime", "max-downtime", "downtime-steps")

POLICY_KEYS: Final[tuple[PolicyKey, ...]] = (
    PolicyKey(
        "max-downtime", "", int, "a whole number of ms greater than 0", 0, DOWNTIME_LIMIT_MS,
        above_low=True, over_high=f"at most {DOWNTIME_LIMIT_MS} (1 minute)", metavar="MS",
        help="longest pause the guest may see at switchover: the ladder's top",
    ),
    PolicyKey(
        "initial-downtime", "", int, "a whole number of ms greater than 0", 0,
        DOWNTIME_LIMIT_MS, above_low=True, over_high=f"at most {DOWNTIME_LIMIT_MS} (1 minute)",
        metavar="MS", help="first, tightest rung of the downtime ladder",
    ),
    PolicyKey(
        "downtime-steps", "", int, "a whole number from 1 to 20", 1, 20, metavar="N",
        help="rungs of the ladder from --initial-downtime to --max-downtime",
    ),
    PolicyKey(
        "timeout", "max_duration_s", float, "a number of seconds greater than 0", 0,
        TIMEOUT_LIMIT_S, above_low=True, over_high=f"at most {TIMEOUT_LIMIT_S} (7 days)",
        metavar="SECONDS",
        help="time budget: a pre-copy still running then is aborted, the guest stays on the source",
    ),
    PolicyKey(
        "prepare-timeout", "prepare_timeout_s", float, "a number of seconds greater than 0", 0,
        TIMEOUT_LIMIT_S, above_low=True, over_high=f"at most {TIMEOUT_LIMIT_S} (7 days)",
        metavar="SECONDS", flag=False,
        help="longest the destination may take to start the incoming guest, nothing sent yet: "
        "then the migration is aborted and the half-started process there is ended",
    ),
    PolicyKey(
        "bandwidth", "bandwidth_mib_s", int, "a whole number of MiB/s greater than 0", 0,
        above_low=True, metavar="MIB_S", help="cap on the migration's transfer rate",
    ),
    PolicyKey(
        "max-throttle", "max_throttle_percent", int, "a whole number from 0 to 99", 0, 99,
        metavar="PERCENT",
        help="most the guest's vCPUs may be slowed (auto-converge) when rounds stall; 0: never",
    ),
    PolicyKey(
        "stall-rounds", "stall_rounds", int, "a whole number greater than 0", 0,
        above_low=True, metavar="N",
        help="rounds without a new minimum of remaining data that count as a stall",
    ),
    PolicyKey(
        "postcopy", "allow_postcopy", bool, "true or false",
        help="post-copy may be the last escalation (the flag is --no-postcopy)",
    ),
    PolicyKey(
        "postcopy-after-fraction", "postcopy_after_fraction", float,
        "a number greater than 0, at most 1", 0, 1, above_low=True, metavar="FRACTION",
        help="share of --timeout after which post-copy comes next, however the rounds go",
        flag=False,
    ),
    PolicyKey(
        "postcopy-resume-wait", "postcopy_resume_wait_s", float, "a number of seconds >= 0", 0,
        metavar="SECONDS", help="how long to wait for a broken post-copy link to come back",
    ),
    PolicyKey(
        "postcopy-stall", "postcopy_stall_s", float, "a number of seconds greater than 0", 0,
        above_low=True, metavar="SECONDS",
        help="post-copy moving no bytes this long counts as a broken link", flag=False,
    ),
    PolicyKey(
        "postcopy-bandwidth", "postcopy_bandwidth_mib_s", int,
        "a whole number of MiB/s greater than 0", 0, above_low=True, metavar="MIB_S",
        help="cap on post-copy's background transfer (unset: none)", flag=False,
    ),
    PolicyKey(
        "postcopy-pause-on-stall", "postcopy_pause_on_stall", bool, "true or false",
        help="pause a stalled post-copy to resume it over a new connection", flag=False,
    ),
    PolicyKey(
        "xbzrle", "xbzrle", bool, "true or false", help="compress re-sent pages (XBZRLE)",
    ),
    PolicyKey(
        "parallel", "parallel_connections", int, "a whole number from 0 to 64", 0, 64,
        metavar="N", help="multifd streams (0: one ordinary stream)",
    ),
    PolicyKey(
        "switchover-bandwidth", "switchover_bandwidth_mib_s", float,
        "a number of MiB/s greater than 0", 0, above_low=True, metavar="MIB_S",
        help="rate of the final, unthrottled round, to judge real pauses by",
    ),
    PolicyKey(
        "compression", "compression", Compression, "auto, zstd or none",
        metavar="{auto,zstd,none}",
        help="compress the memory stream with zstd over 2 multifd streams: auto when the "
        "forecast finds the link (a cap or a measured link) is the limit and pre-copy "
        "converges (QEMU cannot combine multifd with post-copy), zstd always (no post-copy), "
        "none",
    ),
    PolicyKey(
        "tls", "tls", TlsMode, "auto, require or off", metavar="{auto,require,off}",
        help="encrypt the memory stream and the disk copy with TLS: auto where both hosts "
        "have migration certificates (else plaintext, with a warning), require (else a "
        "blocker), off",
    ),
)  # fmt: skip
"""Every setting of a policy file, in the order ``policy show`` prints them."""

_BY_KEY: Final = {k.key: k for k in POLICY_KEYS}
_FIELDS: Final = frozenset(f.name for f in fields(MigrationPolicy))
_BY_FIELD: Final = {k.field: k for k in POLICY_KEYS if k.field}


def policy_key(key: str) -> PolicyKey:
    """The setting named ``key`` (a policy file key / flag name without ``--``)."""
    return _BY_KEY[key]


def policy_value(policy: MigrationPolicy, key: PolicyKey) -> object:
    """The effective value of ``key`` in ``policy`` (None: unset)."""
    if key.key == "max-downtime":
        return policy.max_downtime_ms
    if key.key == "initial-downtime":
        return policy.initial_downtime_ms
    if key.key == "downtime-steps":
        return len(policy.downtime_schedule)
    return getattr(policy, key.field)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return f'"{value}"'
    return repr(value)  # a float keeps every digit (300.0, 0.5)


def policy_to_toml(policy: MigrationPolicy, *, comments: bool = True) -> str:
    """The policy as a policy file: every key, with its effective value.

    An unset value (e.g. no bandwidth cap) is written commented out, since
    TOML has no null; ``load_policy_toml`` of the text gives ``policy`` back.
    """
    lines: list[str] = []
    for key in POLICY_KEYS:
        value = policy_value(policy, key)
        if comments:
            allowed = f"{key.expected}, {key.over_high}" if key.over_high else key.expected
            text = f"{key.help} [{allowed}]"
            lines += textwrap.wrap(text, 88, initial_indent="# ", subsequent_indent="#   ")
        if value is None:
            lines.append(f"# {key.key} = {key.metavar or 'VALUE'}   (unset)")
        else:
            lines.append(f"{key.key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def escalations(policy: MigrationPolicy) -> list[str]:
    """What this policy lets the controller do to the guest, and when, in words.

    One line per escalation, in the order the controller takes them, so an
    operator reads before the move (``check``, ``migrate``'s pre-flight) what
    the report would otherwise tell afterwards.
    """
    ladder = " -> ".join(str(s.downtime_ms) for s in policy.downtime_schedule)
    stall = f"{policy.stall_rounds} round(s) bring no new minimum of remaining data"
    first = policy.initial_downtime_ms
    lines = [
        (
            f"downtime: switch over at the first dirty set that fits {first} ms; "
            f"raised along {ladder} ms when {stall}"
        )
    ]
    if policy.allows_throttle:
        steps = " then ".join(f"{p}%" for p in throttle_steps(policy.max_throttle_percent))
        lines.append(
            f"throttle: may slow the guest's vCPUs by {steps} when the ladder is exhausted "
            "and rounds still stall (--max-throttle, --no-throttle)"
        )
    else:
        lines.append("throttle: never (the guest's vCPUs keep their speed)")
    if policy.allow_postcopy:
        after_s = policy.max_duration_s * policy.postcopy_after_fraction
        lines.append(
            f"post-copy: may switch after {after_s:g} s whatever the rounds do, or earlier "
            "when the ladder and throttling are exhausted; during post-copy the guest runs on "
            "the destination and depends on both hosts and the link (--no-postcopy)"
        )
    else:
        lines.append("post-copy: never")
    lines.append(
        f"abort: pre-copy still running after {policy.max_duration_s:g} s is aborted; "
        "the guest stays on the source (--timeout)"
    )
    return lines


def throttle_steps(max_percent: int) -> tuple[int, ...]:
    """Throttle caps the controller tries, gentlest first: half the allowance, then all."""
    if max_percent <= 0:
        return ()
    half = max(1, max_percent // 2)
    return (half, max_percent) if half < max_percent else (max_percent,)


MEASUREMENTS: Final = frozenset(
    {f.name for f in fields(MeasuredContext)}
    | {"qemu_knows_switchover_rate", "preflight_dirty_mib_s", "postcopy_after_first_pass"}
)
"""Names of measured facts (``MeasuredContext``): never settings, refused by name."""


def _measurement(name: str, *, source: str) -> UsageError:
    known = ", ".join(k.key for k in POLICY_KEYS)
    msg = (
        f"{source}: {name!r} is a measurement, not a setting: vmotion measures it "
        "(pre-flight, earlier migrations) and a policy cannot declare it."
    )
    return UsageError(msg, hint=f"Remove it. Settings a policy may give: {known}.")


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
        if key in MEASUREMENTS:
            raise _measurement(key, source="policy")
        if key not in _FIELDS or key == "downtime_schedule":
            msg = f"Unknown policy field {key!r}."
            raise UsageError(msg, hint=f"Known fields: {', '.join(sorted(_FIELDS))}.")
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


EXAMPLE_POLICY: Final = "examples/policy.toml"


def load_policy_toml(text: str, *, source: str = "policy file") -> MigrationPolicy:
    """Parse a policy from TOML text: the keys of ``POLICY_KEYS``, named as the flags.

    Example (``examples/policy.toml`` has every key, commented)::

        timeout = 120
        postcopy = false
        initial-downtime = 20
        max-downtime = 300
        downtime-steps = 4

    Raises:
        UsageError: invalid TOML, unknown keys, wrong types or bad values; the
            message names the key as written in the file.

    """
    known = ", ".join(k.key for k in POLICY_KEYS)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source} is not valid TOML: {exc}"
        raise UsageError(msg, hint=f"Fix the syntax; {EXAMPLE_POLICY} has every key.") from exc
    ladder: dict[str, int] = {}
    overrides: dict[str, object] = {}
    for name, value in data.items():
        key = _BY_KEY.get(name)
        if key is None and name in MEASUREMENTS:
            raise _measurement(name, source=source)
        if key is None:
            old = _BY_FIELD.get(name)
            msg = f"{source}: unknown setting {name!r}."
            hint = f"Write {old.key!r} (as the flag --{old.key})." if old else f"Known: {known}."
            raise UsageError(msg, hint=hint + f" {EXAMPLE_POLICY} has every key, commented.")
        problem = key.problem(value)
        if problem:
            msg = f"{source}: {name}: {problem}."
            raise UsageError(msg, hint=f"Fix the value of {name} (see {EXAMPLE_POLICY}).")
        if name in _LADDER_KEYS:
            ladder[name] = int(value)
        else:
            overrides[key.field] = key.kind(value)
    return build_policy(
        initial_downtime_ms=ladder.get("initial-downtime"),
        max_downtime_ms=ladder.get("max-downtime"),
        downtime_steps=ladder.get("downtime-steps"),
        overrides=overrides,
    )

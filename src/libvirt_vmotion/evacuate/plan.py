"""Where each guest of an evacuated host goes, and in which order (pure).

No I/O, no clock. Input: one ``Candidate`` per guest and destination (what that
pair's pre-flight found: blockers, the claim, the forecast) and each
destination's ``Room``. Output: a ``Placement`` per guest, in the order the
migrations start.

The rules, each a decision a user can read in the report:

- **Order by forecast**: the guests predicted to finish soonest go first, so the
  host empties fastest and a guest that needs throttling or post-copy never
  holds a slot the easy ones could use. A guest without a prediction goes last
  (its forecast could not be made); ties keep the smaller guest first.
- **Place where it passes and fits, with the most memory headroom after it**:
  among the destinations whose pre-flight has no blocker and whose room (net of
  the guests this plan already put there) still holds the guest's claim. Room is
  the planner's view; the destination's reservation store has the last word when
  the migration starts (``Evacuation`` tries the next destination when it refuses).
- **A guest that fits nowhere stays**, and its placement names, per destination,
  what kept it out.
- **No destination answers at all**: that is a mistake to say at once (exit 7),
  not a plan in which every guest stays (``unreachable_error``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from libvirt_vmotion.errors import ConnectionFailed
from libvirt_vmotion.preflight.result import format_bytes


class Outcome(StrEnum):
    """What happened to one guest of an evacuation."""

    PLANNED = "planned"
    """Placed, not started yet (a dry run stops here)."""
    MOVED = "moved"
    STAYED = "stayed"
    """Fits nowhere: it keeps running on the source (the report says why)."""
    FAILED = "failed"
    """Its migration failed; it runs on the source (or where the error says)."""
    NOT_STARTED = "not-started"
    """Never started: the evacuation was interrupted first."""


@dataclass(frozen=True, slots=True)
class Room:
    """What one destination can still take, as its pre-flight saw it.

    Attributes:
        dest: the destination's URI.
        memory_bytes: memory for incoming guests net of other reservations (None:
            unknown, our agent does not answer there; then memory never rules it out).
        vcpus: vCPUs for incoming guests (None: no limit configured).
        inbound_slots: concurrent incoming migrations it allows.

    """

    dest: str
    memory_bytes: int | None = None
    vcpus: int | None = None
    inbound_slots: int = 2

    def takes(self, claim_bytes: int, vcpus: int) -> str:
        """Why it cannot take that claim now ('' when it can)."""
        if self.memory_bytes is not None and claim_bytes > self.memory_bytes:
            return (
                f"room: {format_bytes(max(self.memory_bytes, 0))} left for incoming guests "
                f"after this evacuation's earlier placements, needs {format_bytes(claim_bytes)}"
            )
        if self.vcpus is not None and vcpus > self.vcpus:
            return f"room: {self.vcpus} vCPUs left for incoming guests, needs {vcpus}"
        return ""

    def minus(self, claim_bytes: int, vcpus: int) -> Room:
        """The room after placing that claim here."""
        return replace(
            self,
            memory_bytes=None if self.memory_bytes is None else self.memory_bytes - claim_bytes,
            vcpus=None if self.vcpus is None else self.vcpus - vcpus,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One guest toward one destination, from that pair's pre-flight.

    Attributes:
        guest: the guest's name.
        dest: the destination's URI.
        blockers: ``name: message`` of each blocker (empty: it may go there).
        claim_bytes: memory the destination must hold (RAM + QEMU overhead).
        vcpus: the guest's vCPUs.
        predicted_s: the forecast's total time (None: no forecast).
        strategy: the forecast's starting strategy ('' without one).

    """

    guest: str
    dest: str
    blockers: tuple[str, ...] = ()
    claim_bytes: int = 0
    vcpus: int = 1
    predicted_s: float | None = None
    strategy: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """One guest's place in the plan.

    Attributes:
        guest: the guest.
        dest: where it goes (None: it stays, ``kept_out`` says why).
        order: its position in the start order (1 = first; 0 = stays).
        predicted_s: its forecast toward ``dest`` (None: none).
        strategy: the forecast's starting strategy there.
        claim_bytes: what it reserves there.
        kept_out: destination -> what kept the guest out of it.
        alternatives: the other destinations it could go to, best first (tried
            when ``dest``'s reservation store refuses at start).

    """

    guest: str
    dest: str | None
    order: int = 0
    predicted_s: float | None = None
    strategy: str = ""
    claim_bytes: int = 0
    kept_out: Mapping[str, str] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON form (the dry run's plan and the report's per-guest entry)."""
        return {
            "guest": self.guest,
            "to": self.dest,
            "order": self.order,
            "predicted_s": None if self.predicted_s is None else round(self.predicted_s, 1),
            "strategy": self.strategy or None,
            "claim_bytes": self.claim_bytes,
            "kept_out": dict(self.kept_out),
        }


def unreachable_error(
    guests: Sequence[str],
    dests: Sequence[str],
    preflights: Mapping[tuple[str, str], object],
) -> ConnectionFailed | None:
    """The connection error to raise when no destination could be reached at all, else None.

    One unreachable destination among others only keeps the guests out of it (its
    placement says why); none reachable is a mistake to say at once (exit 7).

    Args:
        guests: the guests to move.
        dests: the candidate destinations.
        preflights: each (guest, destination) pair's pre-flight: its outcome, or
            the error it raised.

    Returns:
        The first pair's ``ConnectionFailed`` when every pair failed to connect;
        None when a destination answered for some guest (or there is no guest).

    """
    if not guests or not dests:
        return None
    for dest in dests:
        if not all(isinstance(preflights[(g, dest)], ConnectionFailed) for g in guests):
            return None
    first = preflights[(guests[0], dests[0])]
    return first if isinstance(first, ConnectionFailed) else None


def _order_key(cands: Sequence[Candidate]) -> tuple[int, float, int, str]:
    """Sort key of a guest: predicted soonest first, unknown last, then smaller first."""
    passing = [c for c in cands if not c.blockers and c.predicted_s is not None]
    best = min((c.predicted_s for c in passing if c.predicted_s is not None), default=None)
    claim = min((c.claim_bytes for c in cands), default=0)
    return (best is None, best if best is not None else 0.0, claim, cands[0].guest)


def plan_evacuation(
    candidates: Sequence[Candidate], rooms: Sequence[Room]
) -> tuple[Placement, ...]:
    """Place and order every guest (see the module docstring).

    Returns:
        The placements in start order; guests that stay come last (order 0).

    """
    by_guest: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_guest.setdefault(c.guest, []).append(c)
    room = {r.dest: r for r in rooms}
    placed: list[Placement] = []
    stayed: list[Placement] = []
    for guest in sorted(by_guest, key=lambda g: _order_key(by_guest[g])):
        kept_out: dict[str, str] = {}
        fitting: list[tuple[Candidate, Room]] = []
        for c in by_guest[guest]:
            here = room.get(c.dest, Room(c.dest))
            why = "; ".join(c.blockers) or here.takes(c.claim_bytes, c.vcpus)
            if why:
                kept_out[c.dest] = why
            else:
                fitting.append((c, here.minus(c.claim_bytes, c.vcpus)))
        if not fitting:
            stayed.append(Placement(guest=guest, dest=None, kept_out=kept_out))
            continue
        # Most memory headroom after placement; unknown room counts as least (it may be none).
        fitting.sort(
            key=lambda cr: (
                -(cr[1].memory_bytes if cr[1].memory_bytes is not None else -(2**62)),
                cr[0].dest,
            )
        )
        chosen, after = fitting[0]
        room[chosen.dest] = after
        placed.append(
            Placement(
                guest=guest,
                dest=chosen.dest,
                order=len(placed) + 1,
                predicted_s=chosen.predicted_s,
                strategy=chosen.strategy,
                claim_bytes=chosen.claim_bytes,
                kept_out=kept_out,
                alternatives=tuple(c.dest for c, _ in fitting[1:]),
            )
        )
    return (*placed, *stayed)


def share_bandwidth(total_mib_s: int | None, in_flight: int) -> int | None:
    """Each running migration's share of ``--bandwidth-total`` (None: no total given).

    >>> share_bandwidth(100, 3)
    33
    >>> share_bandwidth(None, 2) is None
    True
    """
    if total_mib_s is None or in_flight <= 0:
        return None
    return max(1, total_mib_s // in_flight)


def planning_share(total_mib_s: int | None, *, guests: int, parallel: int) -> int | None:
    """The share of ``--bandwidth-total`` each move gets once the evacuation is in full flight.

    The pre-flights of the planning phase forecast with it (and choose compression
    by it), not with an uncapped link the moves never see.

    >>> planning_share(100, guests=4, parallel=2)
    50
    >>> planning_share(100, guests=1, parallel=2)
    100
    >>> planning_share(None, guests=4, parallel=2) is None
    True
    """
    return share_bandwidth(total_mib_s, min(parallel, guests))


def may_start(
    placement: Placement,
    *,
    in_flight: Mapping[str, int],
    parallel: int,
    slots: Mapping[str, int],
    preparing: Collection[str] = (),
) -> bool:
    """True if ``placement`` may start now: a source slot and a slot on its destination.

    ``in_flight`` counts running migrations per destination URI. ``preparing``: the
    destinations where a move is still in libvirt's prepare step (its QEMU starting,
    nothing sent yet). A second move into such a host waits for it: libvirtd forks
    each incoming QEMU, and two forks at once have deadlocked its child (libvirt 11.3
    with lock_manager = "lockd", seen in the lab: the prepare never returned and
    neither abort nor destroy could end it).
    """
    if placement.dest is None or sum(in_flight.values()) >= parallel:
        return False
    if placement.dest in preparing:
        return False
    return in_flight.get(placement.dest, 0) < slots.get(placement.dest, 2)

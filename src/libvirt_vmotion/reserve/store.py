"""Destination reservations: memory (+QEMU overhead), vCPUs and an inbound slot.

Two parts:

- ``plan`` is pure (no I/O, no clock): given what is already reserved, the
  host's capacity and its available memory, grant or refuse one request, and
  say why in words a user can act on. So are ``lease_ends_by_s`` and
  ``Unreleased``: when a reservation its owner could not release is gone.
- ``ReservationStore`` is the I/O part: a SQLite database per host
  (``/var/lib/libvirt-vmotion/reservations.db``) that survives crashes of our
  process and of libvirtd. Every change is one ``BEGIN IMMEDIATE`` transaction
  (SQLite takes the database's write lock at once), so two migrations racing
  for the last GiB serialize: exactly one is granted, the other refused.

Life of a reservation::

    reserve (controller before transfer, or the hook at ``migrate begin``)
        -> incoming   (hook at ``migrate begin``: the transfer starts; longer lease)
        -> committed  (hook at ``started begin``: the guest runs on this host)
        -> released   (controller after it verified the landing; the hook at once
                       for migrations nobody else owns; the hook at ``stopped``/
                       ``release`` when an incoming migration fails; or lease expiry)

Leases make a crashed controller harmless: every read and write first deletes
expired rows. Capacity comes from ``/etc/libvirt-vmotion/capacity.toml``::

    memory_limit_mib = 1024   # cap on memory for incoming guests (default: none)
    vcpu_limit = 8            # cap on vCPUs of incoming guests (default: none)
    inbound_slots = 2         # concurrent incoming migrations (default 2, as VDSM)
    lease_s = 120             # a fresh reservation's lease
    incoming_lease_s = 3600   # lease once the transfer runs (the hook extends it)
    commit_grace_s = 60       # lease of a committed reservation its owner must release
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

from libvirt_vmotion.errors import ReservationError, UsageError
from libvirt_vmotion.model import MIB

STORE_PATH: Final = Path("/var/lib/libvirt-vmotion/reservations.db")
CAPACITY_PATH: Final = Path("/etc/libvirt-vmotion/capacity.toml")
HOOK_OWNER: Final = "libvirt-hook"
"""Owner of reservations the hook takes itself (a migration we did not start)."""
DEFAULT_BUSY_TIMEOUT_S: Final = 30.0
"""How long the agent and the controller wait for the store's write lock."""


class State(StrEnum):
    """Where a reservation is in its life."""

    RESERVED = "reserved"
    INCOMING = "incoming"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a host offers to incoming migrations (``capacity.toml``)."""

    memory_limit_mib: int | None = None
    vcpu_limit: int | None = None
    inbound_slots: int = 2
    lease_s: float = 120.0
    incoming_lease_s: float = 3600.0
    commit_grace_s: float = 60.0

    def __post_init__(self) -> None:
        """Validate limits; messages name the field and the bad value."""
        for name in ("memory_limit_mib", "vcpu_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                msg = f"{name}={value}: must be >= 0"
                raise ValueError(msg)
        if self.inbound_slots < 0:
            msg = f"inbound_slots={self.inbound_slots}: must be >= 0"
            raise ValueError(msg)
        for name in ("lease_s", "incoming_lease_s", "commit_grace_s"):
            if getattr(self, name) <= 0:
                msg = f"{name}={getattr(self, name)}: must be > 0"
                raise ValueError(msg)

    @property
    def longest_lease_s(self) -> float:
        """The longest lease this host gives a reservation, in any state."""
        return max(self.lease_s, self.incoming_lease_s, self.commit_grace_s)


def load_capacity(path: Path = CAPACITY_PATH) -> Capacity:
    """Read ``capacity.toml``; defaults when the file is absent.

    Raises:
        UsageError: the file is not valid TOML or has unknown/bad keys.

    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Capacity()
    try:
        data = tomllib.loads(text)
        known = {f.name for f in fields(Capacity)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"unknown keys {unknown}"
            raise ValueError(msg)  # noqa: TRY301  reported below with the file name
        return Capacity(**data)
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        msg = f"{path}: {exc}"
        raise UsageError(
            msg,
            hint=f"Fix {path}; keys: memory_limit_mib, vcpu_limit, "
            "inbound_slots, lease_s, incoming_lease_s, commit_grace_s.",
        ) from exc


@dataclass(frozen=True, slots=True)
class Maintenance:
    """The host is in maintenance: no incoming migration (``vmotion maintenance enter``).

    Attributes:
        since_s: when it was entered (Unix seconds).
        by: who entered it (``vmotion pid N on HOST``).

    """

    since_s: float
    by: str

    def to_dict(self) -> dict[str, object]:
        """JSON form (the agent's replies, ``maintenance status``)."""
        return {"since_epoch_s": round(self.since_s), "since_utc": format_utc(self.since_s),
                "by": self.by}  # fmt: skip


def maintenance_refusal(maintenance: Maintenance | None, *, host: str, domain: str) -> Grant | None:
    """The refusal of any incoming guest while ``host`` is in maintenance, else None."""
    if maintenance is None:
        return None
    return Grant(
        granted=False,
        reason=f"{host} is in maintenance since {format_utc(maintenance.since_s)} "
        f"({maintenance.by}): it takes no incoming migration, '{domain}' included.",
        hint=f"Choose another host, or end the maintenance on {host}: "
        "vmotion maintenance exit URI-OF-THAT-HOST",
    )


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """What one incoming guest needs."""

    reservation_id: str
    domain: str
    owner: str
    memory_bytes: int
    """Guest RAM plus QEMU overhead."""
    vcpus: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """One row of the store."""

    reservation_id: str
    domain: str
    owner: str
    memory_bytes: int
    vcpus: int
    state: State
    created_s: float
    expires_s: float

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {
            "id": self.reservation_id,
            "domain": self.domain,
            "owner": self.owner,
            "memory_bytes": self.memory_bytes,
            "vcpus": self.vcpus,
            "state": self.state.value,
            "created_s": self.created_s,
            "expires_s": self.expires_s,
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """``plan``'s decision."""

    granted: bool
    reason: str
    hint: str = ""


def _mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB"


def _no_free_slot(
    request: ReservationRequest, others: Sequence[Reservation], *, capacity: Capacity, host: str
) -> Grant | None:
    """The refusal when every inbound slot is taken by other migrations, else None."""
    if len(others) < capacity.inbound_slots:
        return None
    return Grant(
        granted=False,
        reason=f"{host} already has {len(others)} of {capacity.inbound_slots} inbound "
        f"migration slots in use ({', '.join(r.domain for r in others) or '-'}); "
        f"'{request.domain}' cannot start another.",
        hint="Wait for those migrations to finish, or raise inbound_slots in "
        f"{CAPACITY_PATH} on {host}.",
    )


def plan(  # noqa: PLR0913  the request and the host's state, keyword-only
    request: ReservationRequest,
    *,
    active: Sequence[Reservation],
    capacity: Capacity,
    mem_available_bytes: int,
    host: str,
    maintenance: Maintenance | None = None,
) -> Grant:
    """Decide whether ``request`` fits next to the ``active`` reservations.

    Args:
        request: the new reservation.
        active: unexpired reservations of other migrations.
        capacity: the host's configured limits.
        mem_available_bytes: the host's MemAvailable now.
        host: the host's name, for messages.
        maintenance: the host's maintenance mark (refuses everything), if set.

    Returns:
        Granted, or refused with what is missing and what to do.

    """
    refused = maintenance_refusal(maintenance, host=host, domain=request.domain)
    others = [r for r in active if r.reservation_id != request.reservation_id]
    refused = refused or _no_free_slot(request, others, capacity=capacity, host=host)
    if refused is not None:
        return refused
    reserved = sum(r.memory_bytes for r in others)
    limit = mem_available_bytes
    what = "available"
    if capacity.memory_limit_mib is not None and capacity.memory_limit_mib * MIB < limit:
        limit = capacity.memory_limit_mib * MIB
        what = f"allowed for incoming guests ({CAPACITY_PATH})"
    if reserved + request.memory_bytes > limit:
        return Grant(
            granted=False,
            reason=f"{host} has {_mib(limit)} {what}, {_mib(reserved)} of it reserved by "
            f"other migrations; '{request.domain}' needs {_mib(request.memory_bytes)} "
            "(RAM + QEMU overhead).",
            hint=f"Free memory on {host}, wait for other migrations there, or choose another host.",
        )
    if capacity.vcpu_limit is not None:
        used = sum(r.vcpus for r in others)
        if used + request.vcpus > capacity.vcpu_limit:
            return Grant(
                granted=False,
                reason=f"{host} allows {capacity.vcpu_limit} vCPUs for incoming guests, "
                f"{used} reserved; '{request.domain}' needs {request.vcpus}.",
                hint=f"Raise vcpu_limit in {CAPACITY_PATH} on {host}, or choose another host.",
            )
    return Grant(
        granted=True,
        reason=f"reserved {_mib(request.memory_bytes)} and {request.vcpus} vCPUs on {host} "
        f"({len(others) + 1} of {capacity.inbound_slots} inbound slots)",
    )


def lease_ends_by_s(reserved: Mapping[str, object], *, now_s: float) -> float | None:
    """When a reservation its owner can no longer reach is gone, at the latest.

    The host only ever sets a lease to "its now + one of its leases": the fresh
    lease at ``reserve``, the hook's ``incoming_lease_s`` at ``migrate begin``
    and ``commit_grace_s`` at ``started``; renewing keeps the later end. All of
    that happened before ``now_s``, so the row has expired by the later of the
    first lease's end and ``now_s + longest_lease_s``. (Both hosts' clocks are
    taken to agree, as for every lease.)

    Args:
        reserved: the agent's reply to ``reserve``: the row (``expires_s``) and
            the host's ``longest_lease_s``.
        now_s: wall-clock time (epoch seconds) the release was given up.

    Returns:
        Epoch seconds; None if the reply lacks those figures (an older agent).

    """
    expires_s = reserved.get("expires_s")
    longest_s = reserved.get("longest_lease_s")
    if not isinstance(expires_s, int | float) or not isinstance(longest_s, int | float):
        return None
    return max(float(expires_s), now_s + float(longest_s))


def format_utc(epoch_s: float) -> str:
    """``2026-11-25 21:34:10 UTC``."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Unreleased:
    """A reservation its owner gave up releasing: the host frees it by itself.

    Attributes:
        reservation_id: the reservation.
        host: the host that holds it (for messages).
        reason: why it was not released ("no answer within 3 s", the agent's error).
        ends_by_s: epoch seconds by which its lease has ended at the latest
            (``lease_ends_by_s``); None if unknown.

    """

    reservation_id: str
    host: str
    reason: str
    ends_by_s: float | None

    def message(self) -> str:
        """One sentence for the log: what was not done, and why nobody needs to."""
        when = "when its lease ends"
        if self.ends_by_s is not None:
            when += f", by {format_utc(self.ends_by_s)} at the latest"
        return (
            f"Could not release reservation {self.reservation_id} on {self.host}: "
            f"{self.reason}. Not waiting for it: {self.host} frees it {when} "
            "(at once if the guest stops there)."
        )

    def to_dict(self) -> dict[str, object]:
        """JSON form, for the failure report."""
        return {
            "id": self.reservation_id,
            "host": self.host,
            "released": False,
            "reason": self.reason,
            "lease_ends_by_epoch_s": None if self.ends_by_s is None else round(self.ends_by_s),
            "lease_ends_by_utc": None if self.ends_by_s is None else format_utc(self.ends_by_s),
        }


# --------------------------------------------------------------------------- store

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    owner TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_s REAL NOT NULL,
    expires_s REAL NOT NULL
)
"""
_STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS host_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""
_MAINTENANCE_KEY: Final = "maintenance"
_COLUMNS: Final = "id, domain, owner, memory_bytes, vcpus, state, created_s, expires_s"


def _row(row: tuple[str, str, str, int, int, str, float, float]) -> Reservation:
    rid, domain, owner, mem, vcpus, state, created, expires = row
    return Reservation(rid, domain, owner, mem, vcpus, State(state), created, expires)


class StoreBusy(ReservationError):
    """The store's write lock was not free within the busy timeout."""


class ReservationStore:
    """The per-host reservation database (I/O).

    The database runs in WAL mode: readers never wait for a writer, and a
    writer waits at most ``busy_timeout_s`` for another (then ``StoreBusy``).
    A release that cannot wait (the hook at ``stopped end``) is left as a
    pending release next to the database (``defer_release``); the next
    transaction, whoever runs it, carries it out first.

    Args:
        path: the SQLite file (its directory is created, mode 0700).
        host: the host's name, for messages.
        busy_timeout_s: longest wait for the write lock.

    """

    def __init__(
        self,
        path: Path = STORE_PATH,
        *,
        host: str = "this host",
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.host = host
        self.busy_timeout_s = busy_timeout_s

    @property
    def pending_dir(self) -> Path:
        """Where deferred releases wait for the next transaction."""
        return self.path.with_name(self.path.name + ".pending")

    @contextlib.contextmanager
    def _transaction(self, now_s: float) -> Iterator[sqlite3.Connection]:
        """One write transaction; expired rows and deferred releases go first.

        Raises:
            StoreBusy: another process held the write lock for ``busy_timeout_s``.

        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                conn.execute(_STATE_SCHEMA)
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._busy(exc) from exc
            try:
                conn.execute("DELETE FROM reservations WHERE expires_s <= ?", (now_s,))
                done = self._apply_pending(conn)
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            for marker in done:
                marker.unlink(missing_ok=True)
        finally:
            conn.close()

    def _busy(self, exc: sqlite3.OperationalError) -> StoreBusy:
        msg = (
            f"the reservation store {self.path} on {self.host} stayed locked for "
            f"{self.busy_timeout_s:g} s ({exc})"
        )
        hint = (
            "Another process holds its write lock: find it with `fuser "
            f"{self.path}`; vmotion's own holders finish within seconds."
        )
        return StoreBusy(msg, hint=hint)

    def _apply_pending(self, conn: sqlite3.Connection) -> list[Path]:
        """Carry out deferred releases; return their markers (removed after the commit)."""
        done: list[Path] = []
        for marker in sorted(self.pending_dir.glob("*.json")):
            try:
                item = json.loads(marker.read_text())
                domain, before_s = str(item["domain"]), float(item["before_s"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written or foreign: leave it for its writer
            conn.execute(
                "DELETE FROM reservations WHERE domain = ? AND created_s <= ?", (domain, before_s)
            )
            done.append(marker)
        return done

    def defer_release(self, *, domain: str, now_s: float) -> Path:
        """Leave a release of ``domain``'s reservations made until ``now_s`` for later.

        For when the lock cannot be waited for: the next transaction on this
        store carries it out (a reservation made after ``now_s`` is kept).
        """
        self.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = self.pending_dir / f"{uuid.uuid4().hex}.json"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"domain": domain, "before_s": now_s}))
        tmp.replace(marker)
        return marker

    @staticmethod
    def _all(conn: sqlite3.Connection) -> list[Reservation]:
        cur = conn.execute(f"SELECT {_COLUMNS} FROM reservations ORDER BY created_s")  # noqa: S608  constant
        return [_row(r) for r in cur.fetchall()]

    def list(self, *, now_s: float) -> list[Reservation]:
        """Unexpired reservations (expired ones are deleted on the way)."""
        with self._transaction(now_s) as conn:
            return self._all(conn)

    def reserve(
        self,
        request: ReservationRequest,
        *,
        capacity: Capacity,
        mem_available_bytes: int,
        now_s: float,
    ) -> Reservation:
        """Take a reservation, atomically with the capacity decision.

        A request whose id is already reserved renews its lease (idempotent).

        Raises:
            ReservationError: it does not fit; the message says why.

        """
        with self._transaction(now_s) as conn:
            active = self._all(conn)
            mine = next((r for r in active if r.reservation_id == request.reservation_id), None)
            if mine is not None:
                conn.execute(
                    "UPDATE reservations SET expires_s = ? WHERE id = ?",
                    (max(mine.expires_s, now_s + capacity.lease_s), mine.reservation_id),
                )
                return mine
            return self._grant(
                conn, request, active=active, capacity=capacity,
                mem_available_bytes=mem_available_bytes, state=State.RESERVED,
                now_s=now_s, lease_s=capacity.lease_s,
            )  # fmt: skip

    def _grant(  # noqa: PLR0913  one request and the decision's inputs, keyword-only
        self,
        conn: sqlite3.Connection,
        request: ReservationRequest,
        *,
        active: Sequence[Reservation],
        capacity: Capacity,
        mem_available_bytes: int,
        state: State,
        now_s: float,
        lease_s: float,
    ) -> Reservation:
        """Plan ``request`` against ``active`` and insert it (inside a transaction).

        Raises:
            ReservationError: it does not fit; the message says why.

        """
        grant = plan(
            request,
            active=active,
            capacity=capacity,
            mem_available_bytes=mem_available_bytes,
            host=self.host,
            maintenance=self._maintenance(conn),
        )
        if not grant.granted:
            raise ReservationError(grant.reason, hint=grant.hint)
        row = Reservation(
            reservation_id=request.reservation_id,
            domain=request.domain,
            owner=request.owner,
            memory_bytes=request.memory_bytes,
            vcpus=request.vcpus,
            state=state,
            created_s=now_s,
            expires_s=now_s + lease_s,
        )
        conn.execute(
            f"INSERT INTO reservations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  constant
            (
                row.reservation_id, row.domain, row.owner, row.memory_bytes, row.vcpus,
                row.state.value, row.created_s, row.expires_s,
            ),
        )  # fmt: skip
        return row

    def take_incoming(
        self,
        request: ReservationRequest,
        *,
        capacity: Capacity,
        mem_available_bytes: int,
        now_s: float,
    ) -> Reservation:
        """``migrate begin`` in one transaction: verify or take the domain's reservation.

        The domain's unexpired reservation (a controller's) is moved to
        ``incoming``; without one, ``request`` is planned and, if granted,
        inserted as ``incoming``. Either way with the incoming lease.

        Raises:
            ReservationError: it does not fit; the message says why.
            StoreBusy: the store stayed locked.

        """
        lease_s = capacity.incoming_lease_s
        with self._transaction(now_s) as conn:
            active = self._all(conn)
            mine = next((r for r in active if r.domain == request.domain), None)
            refused = maintenance_refusal(
                self._maintenance(conn), host=self.host, domain=request.domain
            )
            if mine is not None and refused is not None:
                raise ReservationError(refused.reason, hint=refused.hint)
            if mine is None:
                return self._grant(
                    conn, request, active=active, capacity=capacity,
                    mem_available_bytes=mem_available_bytes, state=State.INCOMING,
                    now_s=now_s, lease_s=lease_s,
                )  # fmt: skip
            conn.execute(
                "UPDATE reservations SET state = ?, expires_s = ? WHERE id = ?",
                (State.INCOMING.value, now_s + lease_s, mine.reservation_id),
            )
            return Reservation(
                mine.reservation_id, mine.domain, mine.owner, mine.memory_bytes, mine.vcpus,
                State.INCOMING, mine.created_s, now_s + lease_s,
            )  # fmt: skip

    def commit_started(
        self, domain: str, *, commit_grace_s: float, now_s: float
    ) -> tuple[Reservation, bool] | None:
        """``started begin`` in one transaction: commit the domain's incoming reservation.

        One the hook took itself (``HOOK_OWNER``: nobody else will release it)
        is released at once; a controller's is kept ``commit_grace_s`` for it.

        Returns:
            The reservation and whether it was released, or None if the domain
            had no incoming reservation.

        Raises:
            StoreBusy: the store stayed locked.

        """
        with self._transaction(now_s) as conn:
            mine = next(
                (r for r in self._all(conn) if r.domain == domain and r.state is State.INCOMING),
                None,
            )
            if mine is None:
                return None
            if mine.owner == HOOK_OWNER:
                conn.execute("DELETE FROM reservations WHERE id = ?", (mine.reservation_id,))
                return mine, True
            conn.execute(
                "UPDATE reservations SET state = ?, expires_s = ? WHERE id = ?",
                (State.COMMITTED.value, now_s + commit_grace_s, mine.reservation_id),
            )
            return mine, False

    def for_domain(self, domain: str, *, now_s: float) -> Reservation | None:
        """The unexpired reservation of ``domain``, if any."""
        return next((r for r in self.list(now_s=now_s) if r.domain == domain), None)

    def set_state(
        self, reservation_id: str, state: State, *, lease_s: float, now_s: float
    ) -> Reservation | None:
        """Move a reservation to ``state`` with a new lease; None if it is gone."""
        with self._transaction(now_s) as conn:
            conn.execute(
                "UPDATE reservations SET state = ?, expires_s = ? WHERE id = ?",
                (state.value, now_s + lease_s, reservation_id),
            )
            return next((r for r in self._all(conn) if r.reservation_id == reservation_id), None)

    def release(self, *, now_s: float, reservation_id: str = "", domain: str = "") -> int:
        """Delete a reservation by id, or every reservation of ``domain``; return how many."""
        with self._transaction(now_s) as conn:
            if reservation_id:
                cur = conn.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
            else:
                cur = conn.execute("DELETE FROM reservations WHERE domain = ?", (domain,))
            return cur.rowcount

    # -- maintenance: a mark in the same database, so it survives restarts of
    #    libvirtd and of the agent, and the hook reads it in the same transaction

    @staticmethod
    def _maintenance(conn: sqlite3.Connection) -> Maintenance | None:
        row = conn.execute(
            "SELECT value FROM host_state WHERE key = ?", (_MAINTENANCE_KEY,)
        ).fetchone()
        if row is None:
            return None
        try:
            item = json.loads(row[0])
            return Maintenance(since_s=float(item["since_s"]), by=str(item["by"]))
        except (ValueError, KeyError, TypeError):
            return Maintenance(since_s=0.0, by="unreadable mark")  # fail closed: still in it

    def maintenance(self, *, now_s: float) -> Maintenance | None:
        """The host's maintenance mark, if set."""
        with self._transaction(now_s) as conn:
            return self._maintenance(conn)

    def enter_maintenance(self, *, by: str, now_s: float) -> Maintenance:
        """Set the mark (kept as it is when already set); every incoming guest is refused."""
        with self._transaction(now_s) as conn:
            current = self._maintenance(conn)
            if current is not None:
                return current
            mark = Maintenance(since_s=now_s, by=by)
            conn.execute(
                "INSERT INTO host_state (key, value) VALUES (?, ?)",
                (_MAINTENANCE_KEY, json.dumps({"since_s": now_s, "by": by})),
            )
            return mark

    def exit_maintenance(self, *, now_s: float) -> Maintenance | None:
        """Clear the mark; return the one cleared (None: there was none)."""
        with self._transaction(now_s) as conn:
            current = self._maintenance(conn)
            conn.execute("DELETE FROM host_state WHERE key = ?", (_MAINTENANCE_KEY,))
            return current

"""Host-side client of the guest workload's control port and stream port.

I/O: TCP sockets and a reader thread. Parsing the status JSON
(:meth:`WorkloadStatus.from_json`) and the gap arithmetic are pure.

Runs wherever the guest's address is reachable; in the lab that is the client
network namespace. The control port takes one command line per connection and
answers one JSON line; the stream port sends ``<seq> <guest monotonic ms>`` every
10 ms to each client, forever: the long-lived connection whose survival across a
migration the lab asserts.

Errors (all :class:`RuntimeError`)::

    WorkloadError
    ├── WorkloadUnreachable     connect/read failed or timed out
    └── WorkloadCommandError    the guest answered {"error": ...} or something unparsable
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    from types import TracebackType

logger = logging.getLogger(__name__)

WORKLOAD_CONTROL_PORT: Final = 7000  # workload.c: WORKLOAD_CONTROL_PORT
"""TCP port of the guest workload's control/status server (one command per connection)."""
WORKLOAD_STREAM_PORT: Final = 7001  # workload.c: WORKLOAD_STREAM_PORT
"""TCP port where the guest streams a numbered line every few ms to each client."""
_MAX_REPLY_BYTES: Final = 64 * 1024
_READY_POLL_S: Final = 0.25


class WorkloadError(RuntimeError):
    """Talking to the guest workload failed."""


class WorkloadUnreachable(WorkloadError):
    """The workload's port did not answer (guest down, not booted, or no route)."""


class WorkloadCommandError(WorkloadError):
    """The workload rejected a command or sent an unparsable reply."""


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    """The guest workload's ``status`` reply."""

    boot_id: str
    uptime_s: float
    workload_uptime_s: float
    wss_mib: int
    rate_mib_s: int
    mode: str
    achieved_mib_s: float
    pages_written: int
    pages_verified: int
    verify_passes: int
    mismatches: int
    """Pages found stale (each counted once, then repaired): must stay 0."""
    max_generation: int
    last_verify_pass_s: float = 0.0
    """Duration of the last whole-working-set verification pass (0 before the first)."""
    disk: str = ""
    """Device of the disk log (empty: the guest has no disk log)."""
    disk_kib_s: int = 0
    disk_run_id: str = ""
    """Hex id of this workload run, written into every record."""
    disk_records: int = 0
    """Records handed to the device (acknowledged or in flight)."""
    disk_acked: int = 0
    """Records 0..disk_acked-1 are acknowledged (their fdatasync returned)."""
    disk_verified: int = 0
    disk_verify_passes: int = 0
    """Whole passes re-reading every acknowledged record."""
    disk_mismatches: int = 0
    """Acknowledged records found lost, stale or torn: must stay 0."""
    disk_io_errors: int = 0
    disk_last_problem: str = ""

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, object]) -> WorkloadStatus:
        """Parse a status reply (a JSON line or its decoded dict); unknown keys are ignored.

        Raises:
            WorkloadCommandError: not JSON, an ``error`` reply, or a field missing or mistyped.

        """
        obj = _decode(data)
        if "error" in obj:
            msg = f"workload answered an error instead of a status: {obj['error']}"
            raise WorkloadCommandError(msg)
        values: dict[str, object] = {}
        for field in fields(cls):
            if field.name not in obj:
                if field.default is not MISSING:  # optional (older guests, no disk)
                    continue
                msg = f"status reply lacks {field.name!r}: {obj!r}"
                raise WorkloadCommandError(msg)
            values[field.name] = _coerce(field.name, field.type, obj[field.name])
        return cls(**values)  # type: ignore[arg-type]  # each value was checked by _coerce


def _decode(data: str | bytes | dict[str, object]) -> dict[str, object]:
    if isinstance(data, dict):
        return data
    try:
        obj = json.loads(data)
    except ValueError as exc:
        msg = f"workload reply is not JSON: {data!r}"
        raise WorkloadCommandError(msg) from exc
    if not isinstance(obj, dict):
        msg = f"workload reply is not a JSON object: {data!r}"
        raise WorkloadCommandError(msg)
    return obj


def _coerce(name: str, type_name: object, value: object) -> object:
    """Check one status field against its annotation (a string under postponed evaluation)."""
    ok: bool
    if type_name in {"str", str}:
        ok = isinstance(value, str)
    elif type_name in {"int", int}:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]  # ok => numeric
    if not ok:
        msg = f"status field {name!r} has the wrong type: {value!r}"
        raise WorkloadCommandError(msg)
    return value


def send_command(
    addr: str,
    command: str,
    *,
    timeout_s: float = 2.0,
    port: int = WORKLOAD_CONTROL_PORT,
) -> dict[str, object]:
    """Send one command line to the workload's control port and return its JSON reply.

    Raises:
        WorkloadUnreachable: connecting or reading failed or timed out.
        WorkloadCommandError: the reply is ``{"error": ...}`` or not a JSON object.

    """
    try:
        with socket.create_connection((addr, port), timeout=timeout_s) as sock:
            sock.sendall(command.strip().encode() + b"\n")
            reply = bytearray()
            while b"\n" not in reply and len(reply) < _MAX_REPLY_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        msg = f"workload control port {addr}:{port} did not answer {command!r}: {exc}"
        raise WorkloadUnreachable(msg) from exc
    obj = _decode(bytes(reply))
    if "error" in obj:
        msg = f"workload rejected {command!r}: {obj['error']}"
        raise WorkloadCommandError(msg)
    return obj


def query_status(addr: str, *, timeout_s: float = 2.0) -> WorkloadStatus:
    """Return the workload's current status.

    Raises:
        WorkloadUnreachable: the control port did not answer.
        WorkloadCommandError: the reply is not a valid status.

    """
    return WorkloadStatus.from_json(send_command(addr, "status", timeout_s=timeout_s))


def wait_until_ready(addr: str, *, timeout_s: float) -> WorkloadStatus:
    """Poll the control port until the workload answers ``status``.

    Raises:
        WorkloadUnreachable: no answer within ``timeout_s`` (the last error is chained).

    """
    deadline = time.monotonic() + timeout_s
    last_error: WorkloadError | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            return query_status(addr, timeout_s=max(0.2, min(2.0, remaining)))
        except WorkloadError as exc:
            last_error = exc
        if time.monotonic() + _READY_POLL_S > deadline:
            break
        time.sleep(_READY_POLL_S)
    msg = (
        f"guest workload at {addr}:{WORKLOAD_CONTROL_PORT} not ready after {timeout_s:.0f} s "
        f"(last error: {last_error}); check the guest's serial console log"
    )
    raise WorkloadUnreachable(msg) from last_error


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What a :class:`StreamProbe` saw."""

    lines: int
    longest_gap_ms: float
    """Longest time between consecutive lines (or between the last line and stop)."""
    reset: bool
    """The connection broke: RST, EOF or no data for ``stall_timeout_s``."""
    error: str | None


class StreamProbe:
    """Reads the workload's stream port in a thread and records line arrival gaps.

    Use as a context manager or call :meth:`start` and :meth:`stop`::

        with StreamProbe(GUEST_ADDR) as probe:
            migrate()
        result = probe.result
    """

    def __init__(
        self,
        addr: str,
        *,
        port: int = WORKLOAD_STREAM_PORT,
        connect_timeout_s: float = 5.0,
        stall_timeout_s: float = 60.0,
    ) -> None:
        """Prepare a probe of ``addr:port``; nothing connects until :meth:`start`.

        Args:
            addr: guest address.
            port: stream port.
            connect_timeout_s: how long :meth:`start` waits to connect.
            stall_timeout_s: silence after which the connection counts as broken.

        """
        self._addr = addr
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._lines = 0
        self._longest_gap_s = 0.0
        self._last_line_s: float | None = None
        self._reset = False
        self._error: str | None = None
        self.result: StreamResult | None = None

    def start(self) -> None:
        """Connect (in the caller's thread, so failures raise here) and start reading.

        Raises:
            WorkloadUnreachable: cannot connect to the stream port.

        """
        try:
            sock = socket.create_connection(
                (self._addr, self._port), timeout=self._connect_timeout_s
            )
        except OSError as exc:
            msg = f"workload stream port {self._addr}:{self._port} refused or timed out: {exc}"
            raise WorkloadUnreachable(msg) from exc
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="stream-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None  # noqa: S101 - set by start() before the thread runs
        sock = self._sock
        pending = b""
        last_data_s = time.monotonic()
        while not self._stop.is_set():
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                if time.monotonic() - last_data_s > self._stall_timeout_s:
                    self._fail(f"no data for {self._stall_timeout_s:.0f} s")
                    return
                continue
            except OSError as exc:
                self._fail(f"connection broke: {exc}")
                return
            now = time.monotonic()
            if not chunk:
                self._fail("connection closed by the guest (EOF)")
                return
            last_data_s = now
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for _line in complete:
                if self._last_line_s is not None:
                    self._longest_gap_s = max(self._longest_gap_s, now - self._last_line_s)
                self._last_line_s = now
                self._lines += 1

    def _fail(self, error: str) -> None:
        logger.warning("stream probe of %s:%d: %s", self._addr, self._port, error)
        self._reset = True
        self._error = error

    def stop(self) -> StreamResult:
        """Stop reading, close the connection and return what was seen."""
        now = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
        gap_s = self._longest_gap_s
        if self._last_line_s is not None and not self._reset:
            gap_s = max(gap_s, now - self._last_line_s)
        self.result = StreamResult(
            lines=self._lines,
            longest_gap_ms=gap_s * 1000.0,
            reset=self._reset,
            error=self._error,
        )
        return self.result

    def __enter__(self) -> Self:
        """Start the probe."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the probe; the result is in :attr:`result`."""
        self.stop()

"""One long-lived agent per host for a whole command, instead of one process per call.

A pre-flight asks each host half a dozen questions, the cutover and the release
a few more, and an evacuation that for every guest. One ssh handshake plus one
Python start-up per question cost ~0.25 s each (measured in the lab: ssh 0.13 s,
the interpreter and its imports the rest); over one channel a question costs a
round trip.

The wire format, one JSON object per line both ways::

    python3 -I -m libvirt_vmotion agent serve
    <- {"id": 7, "op": "host-facts", "args": {...}}
    -> {"id": 7, "ok": true, "result": {...}}       (replies in any order)

The agent answers each request in a thread of its own (calls made side by side
stay side by side) and ends when its stdin closes, so a channel never outlives
the command that opened it, however that command ends.

``Channel.call`` raises ``ChannelBroken`` when the channel cannot answer (it
would not start, died, or spoke something else, e.g. an older agent that does
not know ``serve``); ``RemoteHost.call`` then falls back to a one-shot process,
which says precisely what is wrong with the host. I/O module.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

HANDSHAKE_S: Final = 8.0
"""How long a new channel's ``hello`` may take (ssh's 5 s connect, the agent's start).

An agent from before channels reads its stdin to the end and never answers: the
handshake's timeout sends every call to one process per call instead, and no real
request was sent to it, so nothing runs twice."""
SERVE_OP: Final = "serve"
"""The agent's pseudo-operation that answers JSON lines until its stdin closes."""
STDERR_TAIL: Final = 4096


class ChannelBroken(Exception):
    """The channel cannot answer this call.

    ``retry_safe``: the agent cannot have run the request (it never reached a
    working agent), so one process per call may run it; otherwise the request
    may have run there, and running it again is not ours to decide.
    """

    def __init__(self, message: str, *, retry_safe: bool) -> None:
        """Say why, and whether running the request another way is safe."""
        super().__init__(message)
        self.retry_safe = retry_safe


class ChannelTimeout(ChannelBroken):
    """The request went out and no reply came before the call's deadline."""


@dataclass(slots=True)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, object] | None = None


@dataclass(slots=True)
class Channel:
    """Our end of one ``agent serve`` process (local, or over ssh).

    Attributes:
        proc: the agent (or the ssh carrying it).
        max_line: the longest reply line read; a longer one breaks the channel.
        answered: how many calls it answered (a channel that never answered is
            not tried again for that host).

    """

    proc: subprocess.Popen[bytes]
    max_line: int
    answered: int = 0
    broken: str = ""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _err: bytearray = field(default_factory=bytearray)
    _hello: _Pending = field(default_factory=_Pending)

    @classmethod
    def open(cls, argv: list[str], *, max_line: int) -> Channel:
        """Start the agent; its replies are read by a thread of ours.

        Raises:
            ChannelBroken: it could not be started.

        """
        try:
            proc = subprocess.Popen(
                argv,
                cwd="/",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C meant for us is not ssh's
            )
        except OSError as exc:
            raise ChannelBroken(str(exc), retry_safe=True) from exc
        chan = cls(proc, max_line)
        for target, stream in ((chan._read_replies, proc.stdout), (chan._read_err, proc.stderr)):
            threading.Thread(target=target, args=(stream,), daemon=True).start()
        chan._send(chan._hello, "hello", {})
        return chan

    def _send(self, pending: _Pending, op: str, args: Mapping[str, object]) -> int:
        """Write one request (under the lock); a failed write breaks the channel."""
        with self._lock:
            call_id = next(self._ids)
            self._pending[call_id] = pending
            line = json.dumps({"id": call_id, "op": op, "args": dict(args)}) + "\n"
            try:
                assert self.proc.stdin is not None  # noqa: S101  PIPE above
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except OSError as exc:
                self._break_locked(f"cannot write to it: {exc}")
        return call_id

    def _handshake(self, timeout_s: float) -> None:
        """Wait for the agent's answer to ``hello``: before it, no request is sent.

        Raises:
            ChannelBroken: (retry-safe) no answer in time, or not a working agent.

        """
        if not self._hello.done.wait(min(HANDSHAKE_S, timeout_s)):
            with self._lock:
                self._break_locked("no answer to the handshake (an agent without channels?)")
        reply = self._hello.reply
        if reply is None or not reply.get("ok"):
            with self._lock:
                self._break_locked(self.broken or "the handshake failed")
            raise ChannelBroken(self.broken, retry_safe=True)

    def call(self, op: str, args: Mapping[str, object], *, timeout_s: float) -> dict[str, object]:
        """Send one request and wait for its reply (the agent's ``{"ok": ...}`` object).

        Raises:
            ChannelBroken: no reply: the channel is broken, or the deadline passed.

        """
        self._handshake(timeout_s)
        pending = _Pending()
        with self._lock:
            if self.broken:
                raise ChannelBroken(self.broken, retry_safe=False)
        call_id = self._send(pending, op, args)
        if not pending.done.wait(timeout_s):
            with self._lock:
                self._pending.pop(call_id, None)
            msg = f"no answer: timed out after {timeout_s:g} seconds"
            raise ChannelTimeout(msg, retry_safe=False)
        if pending.reply is None:  # sent to a working agent: it may have run there
            raise ChannelBroken(self.broken or "it ended", retry_safe=False)
        return pending.reply

    def hang_up(self) -> None:
        """Close its stdin without waiting: the agent ends (``close`` reaps it)."""
        with self._lock:
            self._break_locked("closed")
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self, timeout_s: float = 2.0) -> None:
        """Close its stdin (the agent ends) and reap it."""
        with self._lock:
            self._break_locked("closed")
        end_process(self.proc, timeout_s=timeout_s)

    def _read_replies(self, stream: IO[bytes]) -> None:
        why = "its reply reader failed"
        try:
            why = self._dispatch(stream)
        finally:  # whatever happened to this thread, no caller waits on a dead reader
            with self._lock:
                tail = self._err.decode(errors="replace").strip()[-400:]
                self._break_locked(f"{why}: {tail}" if tail else why)

    def _dispatch(self, stream: IO[bytes]) -> str:
        """Hand each reply to its caller; return why the stream ended."""
        why = "it ended"
        while line := stream.readline(self.max_line + 1):
            if len(line) > self.max_line:
                self.proc.kill()
                why = f"a reply passed {self.max_line >> 20} MiB; refused"
                break
            reply = _parse(line)
            if reply is None:
                why = "it answered something other than our JSON lines (an older agent?)"
                break
            with self._lock:
                call_id = reply.pop("id")
                pending = self._pending.pop(call_id if isinstance(call_id, int) else -1, None)
                self.answered += 1
            if pending is not None:
                pending.reply = reply
                pending.done.set()
        return why

    def _read_err(self, stream: IO[bytes]) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            with self._lock:
                self._err.extend(chunk)
                del self._err[: max(0, len(self._err) - STDERR_TAIL)]

    def _break_locked(self, why: str) -> None:
        if not self.broken:
            self.broken = why
        for pending in self._pending.values():
            pending.done.set()  # reply None: the caller falls back
        self._pending.clear()


def _parse(line: bytes) -> dict[str, object] | None:
    """One reply line, or None when it is not one of ours (an id and an ``ok``)."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(reply, dict) or "ok" not in reply:
        return None
    call_id = reply.get("id")
    if not isinstance(call_id, int) or isinstance(call_id, bool):
        return None
    return reply


def end_process(proc: subprocess.Popen[Any], *, timeout_s: float) -> None:
    """Close an agent's stdin (it ends by itself then), wait for it, kill it if it lingers."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(slots=True)
class _Pool:
    """The open channels of this process, one per way of reaching a host."""

    channels: dict[tuple[str, ...], Channel] = field(default_factory=dict)
    refused: set[tuple[str, ...]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, argv: list[str], *, max_line: int) -> Channel:
        key = tuple(argv)
        with self.lock:
            if key in self.refused:
                msg = "this host's agent does not keep a channel"
                raise ChannelBroken(msg, retry_safe=True)
            chan = self.channels.get(key)
            if chan is not None and chan.broken:
                if not chan.answered:  # never worked: one process per call from now on
                    self.refused.add(key)
                    del self.channels[key]
                    raise ChannelBroken(chan.broken, retry_safe=True)
                chan = None  # it worked, then broke (a dropped ssh): open another
            if chan is None:
                chan = Channel.open(argv, max_line=max_line)
                self.channels[key] = chan
            return chan

    def close_all(self) -> None:
        """Close every channel: all agents are told at once, then each is reaped.

        One by one, each ssh's teardown was waited for in turn (0.1 s a host).
        """
        with self.lock:
            channels, self.channels = list(self.channels.values()), {}
        for chan in channels:
            chan.hang_up()
        for chan in channels:
            chan.close()


POOL: Final = _Pool()
atexit.register(POOL.close_all)


def call(
    argv: list[str], op: str, args: Mapping[str, object], *, timeout_s: float, max_line: int
) -> dict[str, object]:
    """Ask ``op`` over the pooled channel that ``argv`` starts.

    Raises:
        ChannelBroken: the channel cannot answer; fall back to one process.

    """
    chan = POOL.get(argv, max_line=max_line)
    try:
        return chan.call(op, args, timeout_s=timeout_s)
    except ChannelBroken:
        if not chan.answered:
            with POOL.lock:
                POOL.refused.add(tuple(argv))
        raise

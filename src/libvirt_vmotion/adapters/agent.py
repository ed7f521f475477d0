"""Our package on another host, reached the way libvirt reaches that host.

Some facts and actions exist only on a host itself: bridge port flags,
reservations, host memory detail, sending announcements on the destination's
bridge, reading its forwarding database. libvirt's remote API cannot give or do
them, so this package runs *on* that host as a one-shot agent::

    python3 -m libvirt_vmotion agent OP      # JSON arguments on stdin
    -> {"ok": true, "result": {...}}          # one JSON object on stdout
    -> {"ok": false, "error": "...", "hint": "..."}

The client derives the transport from the host's libvirt URI:

- ``qemu+ssh://[user@]host[:port]/...`` -> ``ssh [-p port] -l user -- host``
- ``qemu+tcp://host/...``, ``qemu+tls://host/...`` -> ``ssh -l root -- host``

User and host come from a URI someone typed or a script built: both are
checked (``ssh_target``) and passed so that ssh never reads them as options
(``-oProxyCommand=...@host`` would otherwise run a command here).
- a local URI (``qemu:///system``, ``qemu+unix://...``) -> a local subprocess

Two environment variables adapt it to a site: ``VMOTION_AGENT_SSH`` (the ssh
command, default ``ssh -o BatchMode=yes -o ConnectTimeout=5``) and
``VMOTION_AGENT_PYTHON`` (the remote interpreter, default ``python3``). The
namespace lab sets both for commands run through ``vmotion lab exec``, and
runs a real sshd in each lab host: the lab uses the production path.

Operations are registered in ``adapters.ops`` (``REGISTRY``): each has a name, a
typed request and reply, and the ``module:function`` that runs it on the host.
``serve`` refuses an unknown operation and validates the request before calling
it; clients call ``ops.HELLO.call(host, ...)`` and get the reply validated into
its dataclass. ``RemoteHost.call`` is the untyped transport under both. I/O module.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import json
import logging
import os
import queue
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Final
from urllib.parse import urlsplit

from libvirt_vmotion import __version__
from libvirt_vmotion.adapters import channel, ops
from libvirt_vmotion.adapters.ops import AgentOperationFailed, AgentTimedOut, AgentUnavailable
from libvirt_vmotion.errors import UsageError, VmotionError

log = logging.getLogger(__name__)

GUARD_OP: Final = "guard"
"""The one operation that streams: the controller's guard (``converge.guard``)."""
DEFAULT_SSH: Final = "ssh -o BatchMode=yes -o ConnectTimeout=5"
_SSH_USER: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?"
)
DEFAULT_PYTHON: Final = "python3"
MAX_REPLY_BYTES: Final = 1 << 20
"""The largest agent reply read (the largest real one, host-facts, is a few KiB)."""
ISOLATED: Final = ("-I",)
"""How every child Python of ours starts: isolated from the caller's directory and env.

``-m`` alone puts the working directory first on ``sys.path``: a
``libvirt_vmotion/`` someone planted in a shared directory root ran ``vmotion``
from would run as root. ``-I`` leaves out the working directory, ``PYTHON*``
variables and the user's site-packages; the child also runs in ``/``.
"""
ONESHOT_ENV: Final = "VMOTION_AGENT_ONESHOT"
"""Set to 1: one agent process per call, no channel (``adapters.channel``)."""
CANCEL_ON_EOF: Final = "_cancel_on_eof"
"""Argument of a call started with ``RemoteHost.start``: the agent ends the operation
when its stdin closes (the client cancelled, or died), instead of running on."""
CANCEL_GRACE_S: Final = 2.0
"""How long a cancelled call's agent gets to end on its own before it is killed."""


__all__ = [
    "AgentCall",
    "AgentOperationFailed",
    "AgentUnavailable",
    "Guard",
    "RemoteHost",
    "hello",
    "main",
    "report_progress",
    "serve",
    "ssh_target",
]


def hello(_args: Mapping[str, object]) -> dict[str, object]:
    """Identify the agent: version and hostname (a connectivity check)."""
    return {"version": __version__, "hostname": socket.gethostname()}


def report_progress(item: Mapping[str, object]) -> None:
    """From inside an operation: tell a client that started it (``AgentCall.next_progress``).

    One JSON line ``{"progress": item}`` on stdout, before the reply (always the
    last line).
    """
    sys.stdout.write(json.dumps({"progress": dict(item)}, sort_keys=True) + "\n")
    sys.stdout.flush()


def _handler(target: str) -> Callable[[Mapping[str, object]], dict[str, object]]:
    module_name, _, func_name = target.partition(":")
    func: Callable[[Mapping[str, object]], dict[str, object]] = getattr(
        importlib.import_module(module_name), func_name
    )
    return func


def serve(op: str, stdin_text: str) -> dict[str, object]:
    """Run one operation on this host; never raises (errors become the reply).

    An unknown operation is refused, naming the known ones; the arguments are
    validated into the operation's request dataclass before its handler runs.
    """
    try:
        operation = ops.operation(op)
        args = json.loads(stdin_text) if stdin_text.strip() else {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "agent arguments must be a JSON object", "hint": ""}
        args.pop(CANCEL_ON_EOF, None)  # the transport's, not the operation's
        operation.parse_request(args)
        return {"ok": True, "result": _handler(operation.handler)(args)}
    except VmotionError as exc:
        return {"ok": False, "error": exc.message, "hint": exc.hint}
    except Exception as exc:  # noqa: BLE001  the reply must carry any failure back
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "hint": ""}


def _end_on_eof(done: threading.Event) -> None:
    """Interrupt the operation once the client closes our stdin (cancel, or its death)."""
    sys.stdin.read()
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str]) -> int:
    """Entry of ``python -m libvirt_vmotion agent OP``.

    The arguments are one line of JSON on stdin. If they ask for it
    (``CANCEL_ON_EOF``), the client keeps stdin open while it waits, and the
    operation is interrupted when stdin closes: a cancelled or dead client
    leaves nothing running here.
    """
    # What the agent creates (the reservation store, share markers ...) is root's alone.
    os.umask(0o077)
    if len(argv) != 1:
        sys.stderr.write("usage: python -m libvirt_vmotion agent OP < args.json\n")
        return 2
    if argv[0] == channel.SERVE_OP:  # many calls over one process: see adapters.channel
        return serve_lines(sys.stdin, sys.stdout)
    if argv[0] == GUARD_OP:  # streams its standard input: see converge.guard
        guard = importlib.import_module("libvirt_vmotion.converge.guard")
        guard.ignore_hangups()
        return int(guard.run_guard(sys.stdin))
    text = sys.stdin.readline()
    done = threading.Event()
    try:
        wants_cancel = bool(json.loads(text).get(CANCEL_ON_EOF)) if text.strip() else False
    except (ValueError, AttributeError):
        wants_cancel = False
    if wants_cancel:
        threading.Thread(target=_end_on_eof, args=(done,), daemon=True).start()
    else:
        text += sys.stdin.read()
    try:
        reply = serve(argv[0], text)
    except KeyboardInterrupt:
        reply = {"ok": False, "error": "cancelled: the client closed the call", "hint": ""}
    done.set()
    try:
        sys.stdout.write(json.dumps(reply, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        return 1  # the client is gone; nobody to tell
    return 0 if reply.get("ok") else 1


def _preload() -> None:
    """Import every operation's module now, while the client is still connecting to libvirt."""
    for operation in list(ops.REGISTRY.values()):
        with contextlib.suppress(Exception):
            importlib.import_module(operation.handler.partition(":")[0])


def serve_lines(requests: IO[str], replies: IO[str]) -> int:
    """Answer ``{"id", "op", "args"}`` lines until ``requests`` ends (``adapters.channel``).

    Each request runs in a thread of its own; replies carry the request's id and
    go out whole, one line each, in the order they finish. Whatever an operation
    prints goes to stderr, so nothing but replies reaches ``replies``.
    """
    write_lock = threading.Lock()
    sys.stdout = sys.stderr  # stray output must not break the reply stream
    threading.Thread(target=_preload, daemon=True).start()
    running: list[threading.Thread] = []

    def answer(call_id: object, op: str, args: object) -> None:
        try:
            reply = (
                serve(op, json.dumps(args))
                if isinstance(args, dict)
                else {"ok": False, "error": "agent arguments must be a JSON object", "hint": ""}
            )
            line = json.dumps({**reply, "id": call_id}, sort_keys=True) + "\n"
        except BaseException as exc:  # noqa: BLE001  every request gets a reply, whatever happened
            error = f"{type(exc).__name__}: {exc}"
            failed = {"ok": False, "error": error, "hint": "", "id": call_id}
            line = json.dumps(failed, sort_keys=True, default=str) + "\n"
        with write_lock:
            replies.write(line)
            replies.flush()

    for text in requests:
        try:
            request = json.loads(text)
            call_id, op, args = request["id"], str(request["op"]), request.get("args", {})
        except (ValueError, KeyError, TypeError):
            return 2  # not our client: stop rather than guess
        thread = threading.Thread(target=answer, args=(call_id, op, args), daemon=True)
        thread.start()
        running = [t for t in running if t.is_alive()] + [thread]
    for thread in running:  # the client closed its end: finish what it asked, then go
        thread.join(timeout=CANCEL_GRACE_S)
    return 0


def ssh_target(*, user: str, host: str, uri: str) -> tuple[str, ...]:
    """``-l USER -- HOST`` for ssh, after checking both are a user and a host name.

    Raises:
        UsageError: either could be read as something else (an option, a command).

    """
    is_ip = True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_ip = False
    if not is_ip and not _HOSTNAME.fullmatch(host):
        msg = f"the host {host!r} in {uri} is not a host name or an IP address"
        raise UsageError(msg, hint="Give the URI as qemu+ssh://[user@]HOST[:port]/system.")
    if not _SSH_USER.fullmatch(user):
        msg = f"the user {user!r} in {uri} is not a user name"
        raise UsageError(msg, hint="A user name has letters, digits, '.', '_' or '-' (not first).")
    return ("-l", user, "--", host)


class ReplyTooLarge(Exception):
    """The agent's output passed ``MAX_REPLY_BYTES``."""


def _run_capped(argv: list[str], stdin: bytes, *, timeout_s: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in ``/``; return (exit code, stdout, the tail of stderr).

    Like ``subprocess.run(capture_output=True, timeout=...)``, but a reply
    larger than ``MAX_REPLY_BYTES`` kills the child instead of filling our
    memory: the other end of the ssh is not ours to trust.

    Raises:
        OSError: it could not be started.
        subprocess.TimeoutExpired: it did not finish within ``timeout_s``.
        ReplyTooLarge: it wrote more than ``MAX_REPLY_BYTES`` to stdout.

    """
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/"
    ) as proc:
        if proc.stdin is None or proc.stdout is None or proc.stderr is None:  # all three PIPE
            msg = "no pipes to the agent"
            raise OSError(msg)
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
        out, err = bytearray(), bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    proc.kill()
                    raise subprocess.TimeoutExpired(argv, timeout_s)
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if len(out) > MAX_REPLY_BYTES:
                        proc.kill()
                        msg = f"its reply passed {MAX_REPLY_BYTES >> 20} MiB; refused"
                        raise ReplyTooLarge(msg)
                    del err[: max(0, len(err) - 4096)]  # only the tail is ever shown
        try:
            returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return returncode, bytes(out), bytes(err)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write the arguments and close (a thread: a child that never reads must not block us)."""
    try:
        pipe.write(data)
        pipe.close()
    except OSError:
        pass  # it exited without reading; its reply (or none) says why


@dataclass(frozen=True, slots=True)
class RemoteHost:
    """How to run the agent on one host.

    Attributes:
        label: the host as users name it (for messages).
        prefix: the command that reaches it (``ssh root@kvm2``), empty for local.
        python: the interpreter there.

    """

    label: str
    prefix: tuple[str, ...]
    python: str

    @classmethod
    def for_uri(cls, uri: str) -> RemoteHost:
        """Derive the transport from a libvirt URI (see the module docstring).

        Raises:
            UsageError: the URI's user or host is not one (``ssh_target``).

        """
        parts = urlsplit(uri)
        if not parts.hostname:
            # Local: this very interpreter has the package.
            return cls(label="localhost", prefix=(), python=sys.executable)
        python = os.environ.get("VMOTION_AGENT_PYTHON", DEFAULT_PYTHON)
        ssh = shlex.split(os.environ.get("VMOTION_AGENT_SSH", DEFAULT_SSH))
        user = parts.username or "root"
        scheme = parts.scheme.partition("+")[2]
        port = ["-p", str(parts.port)] if scheme == "ssh" and parts.port else []
        target = ssh_target(user=user, host=parts.hostname, uri=uri)
        return cls(label=parts.hostname, prefix=(*ssh, *port, *target), python=python)

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        """Run ``op`` on the host and return its result.

        Raises:
            AgentUnavailable: the agent could not be run there.
            AgentOperationFailed: it ran and reported a failure.

        """
        if os.environ.get(ONESHOT_ENV) != "1":
            reply = self._via_channel(op, dict(args or {}), timeout_s=timeout_s)
            if reply is not None:
                return self._result_of(reply)
        try:
            returncode, out, err = _run_capped(
                self._argv(op), json.dumps(dict(args or {})).encode(), timeout_s=timeout_s
            )
        except (OSError, subprocess.TimeoutExpired, ReplyTooLarge) as exc:
            timed_out = isinstance(exc, subprocess.TimeoutExpired)
            raise self._unavailable(str(exc), timed_out=timed_out) from exc
        return self._result(out.decode(errors="replace"), err.decode(errors="replace"), returncode)

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> AgentCall:
        """Start ``op`` on the host without waiting; ``AgentCall.cancel`` ends it there.

        The agent's stdin stays open while the call runs: closing it (a cancel, or
        this process dying) ends the operation on the host, so nothing outlives
        the migration it was for.

        Raises:
            AgentUnavailable: the agent could not be started.

        """
        try:
            proc = subprocess.Popen(
                self._argv(op),
                cwd="/",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a Ctrl-C meant for us is not ssh's
            )
        except OSError as exc:
            raise self._unavailable(str(exc)) from exc
        call = AgentCall(self, proc, deadline_s=time.monotonic() + timeout_s)
        try:
            assert proc.stdin is not None  # noqa: S101  PIPE above
            proc.stdin.write(json.dumps({**dict(args or {}), CANCEL_ON_EOF: True}) + "\n")
            proc.stdin.flush()
        except OSError:
            pass  # it died at once: result() says why
        return call

    def _argv(self, op: str) -> list[str]:
        """The agent's command line: isolated, in ``/`` (ssh starts in the login's home)."""
        remote = [self.python, *ISOLATED, "-m", "libvirt_vmotion", "agent", op]
        return [*self.prefix, f"cd / && exec {shlex.join(remote)}"] if self.prefix else remote

    def warm(self) -> None:
        """Start this host's channel now: its ssh and imports overlap what the caller does next."""
        if os.environ.get(ONESHOT_ENV) != "1":
            with contextlib.suppress(channel.ChannelBroken):
                channel.POOL.get(self._argv(channel.SERVE_OP), max_line=MAX_REPLY_BYTES)

    def _via_channel(
        self, op: str, args: Mapping[str, object], *, timeout_s: float
    ) -> dict[str, object] | None:
        """The reply over this host's channel; None when one process per call must do it.

        Raises:
            AgentUnavailable: the channel took the request and then failed (it may
                have run there: not run twice).

        """
        try:
            return channel.call(
                self._argv(channel.SERVE_OP),
                op,
                args,
                timeout_s=timeout_s,
                max_line=MAX_REPLY_BYTES,
            )
        except channel.ChannelBroken as exc:
            if not exc.retry_safe:
                timed_out = isinstance(exc, channel.ChannelTimeout)
                raise self._unavailable(str(exc), timed_out=timed_out) from exc
            log.debug("no agent channel to %s (%s): one process per call", self.label, exc)
            return None

    def _result(self, stdout: str, stderr: str, returncode: int | None) -> dict[str, object]:
        try:
            reply = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError, RecursionError):
            raise self._unavailable(stderr.strip()[-400:] or f"exit {returncode}") from None
        if not isinstance(reply, dict):
            detail = f"its reply is a JSON {type(reply).__name__}, not an object"
            raise self._unavailable(detail)
        return self._result_of(reply)

    def _result_of(self, reply: dict[str, object]) -> dict[str, object]:
        """The result of one reply object, or the failure it reports."""
        if not reply.get("ok"):
            msg = f"on {self.label}: {reply.get('error')}"
            raise AgentOperationFailed(msg, hint=str(reply.get("hint") or ""))
        result = reply.get("result", {})
        if not isinstance(result, dict):
            detail = f"its result is a JSON {type(result).__name__}, not an object"
            raise self._unavailable(detail)
        return result

    def start_guard(self, args: Mapping[str, object]) -> Guard:
        """Start the controller's guard on the host; it acts if this process dies.

        It runs in a session of its own, so a Ctrl-C at the terminal reaches only
        us; its input is a pipe from this process, which the kernel closes when we
        die, however we die. Best effort: a guard that cannot start is a warning.
        """
        proc = subprocess.Popen(
            self._argv(GUARD_OP),
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        guard = Guard(proc)
        guard.send(json.dumps(dict(args), sort_keys=True))
        return guard

    def _unavailable(self, detail: str, *, timed_out: bool = False) -> AgentUnavailable:
        how = shlex.join(self.prefix) if self.prefix else "a local subprocess"
        msg = f"Could not run libvirt-vmotion on {self.label} (via {how}): {detail}"
        return (AgentTimedOut if timed_out else AgentUnavailable)(
            msg,
            hint=f"Install libvirt-vmotion on {self.label} and allow key-based ssh from here "
            "(or set VMOTION_AGENT_SSH / VMOTION_AGENT_PYTHON).",
        )


@dataclass(slots=True)
class Guard:
    """Our end of a running guard: its input pipe (see ``RemoteHost.start_guard``)."""

    proc: subprocess.Popen[str]

    def send(self, line: str) -> None:
        """One line to the guard (ignored once it is gone)."""
        if self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass

    def close(self, *, ok: bool, timeout_s: float = 10.0) -> None:
        """Tell the guard how the migration ended, and let it go.

        After a failure (``ok`` false) the guard makes sure no pre-copy job is left.
        """
        self.send("done" if ok else "failed")
        channel.end_process(self.proc, timeout_s=timeout_s)


@dataclass(slots=True)
class AgentCall:
    """An operation started with ``RemoteHost.start``: wait for it, or cancel it."""

    host: RemoteHost
    proc: subprocess.Popen[str]
    deadline_s: float
    """Monotonic time after which ``result`` cancels the call."""
    _out: list[str] = field(default_factory=list)
    _err: list[str] = field(default_factory=list)
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _readers: tuple[threading.Thread, ...] = ()
    cancelled: bool = False

    def __post_init__(self) -> None:
        """Read the agent's stdout and stderr as they come (a full pipe would stall it)."""

        def drain(stream: IO[str] | None, into: list[str], lines: queue.Queue[str] | None) -> None:
            for line in stream if stream is not None else ():
                into.append(line)
                if lines is not None:
                    lines.put(line)
            if lines is not None:
                lines.put("")  # the end: no more progress

        self._readers = (
            threading.Thread(
                target=drain, args=(self.proc.stdout, self._out, self._lines), daemon=True
            ),
            threading.Thread(target=drain, args=(self.proc.stderr, self._err, None), daemon=True),
        )
        for reader in self._readers:
            reader.start()

    def result(self) -> dict[str, object]:
        """Wait for the reply until the deadline (then cancel); return its result.

        Raises:
            AgentUnavailable: no reply (cancelled, timed out, or the agent died).
            AgentOperationFailed: the operation reported a failure.

        """
        try:
            self.proc.wait(timeout=max(0.0, self.deadline_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.cancel()
            msg = "no answer before the call's deadline"
            raise self.host._unavailable(msg) from None  # noqa: SLF001  same module
        for reader in self._readers:
            reader.join()
        self._close_stdin()
        if self.cancelled:
            msg = "the call was cancelled"
            raise self.host._unavailable(msg)  # noqa: SLF001  same module
        return self.host._result("".join(self._out), "".join(self._err), self.proc.returncode)  # noqa: SLF001  same module

    def next_progress(self, timeout_s: float) -> dict[str, object] | None:
        """The next ``report_progress`` item; None at the end of output or after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                return None
            if not line:
                self._lines.put("")  # later calls see the end too
                return None
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("progress"), dict):
                return dict(item["progress"])
        return None

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """End the call: close the agent's stdin (it stops there), kill what lingers, reap."""
        if self.proc.returncode is None:
            self.cancelled = True
        self._close_stdin()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=grace_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc.wait()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

"""Numbers typed on the command line: one parser for ``vmotion`` and ``vmotion bench``.

Pure: no I/O, no clock, no logging. ``parse_number`` says what is wrong in words
that read after an option name (``--timeout: expected a number of seconds
greater than 0, got '0'``); ``positive_number`` wraps it as an argparse
``type=``, whose error argparse prefixes with ``argument --timeout:``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import math
import re
from collections.abc import Callable
from typing import Final, TypeVar
from urllib.parse import urlsplit

NumberT = TypeVar("NumberT", int, float)

_NOUNS: Final[dict[type, str]] = {int: "a whole number", float: "a number"}


def parse_number(
    text: str, kind: type[NumberT], *, what: str = "", positive: bool = False
) -> NumberT:
    """Parse ``text`` as an ``int`` or a finite ``float``.

    Args:
        text: what the user typed.
        kind: ``int`` or ``float``.
        what: the expected value in words (default "a whole number" / "a number").
        positive: also require a value greater than 0.

    Returns:
        The number.

    Raises:
        ValueError: ``text`` is not such a number; the message names what was
            expected and what was given, e.g. "expected a whole number greater
            than 0, got '0'".

    """
    wanted = (what or _NOUNS[kind]) + (" greater than 0" if positive else "")
    msg = f"expected {wanted}, got {text!r}"
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(msg) from None
    # float() also takes "nan" and "inf", which no option of ours means.
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(msg)
    return value


def positive_number(kind: type[NumberT], *, what: str = "") -> Callable[[str], NumberT]:
    """An argparse ``type=`` accepting numbers greater than 0 (see ``parse_number``).

    Args:
        kind: ``int`` or ``float``.
        what: the expected value in words, e.g. "a number of seconds".

    Returns:
        A function argparse calls with the option's text; it raises
        ``argparse.ArgumentTypeError`` with ``parse_number``'s message.

    """

    def parse(text: str) -> NumberT:
        try:
            return parse_number(text, kind, what=what, positive=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def number_in_range(
    kind: type[NumberT], *, low: NumberT, high: NumberT, what: str = ""
) -> Callable[[str], NumberT]:
    """An argparse ``type=`` accepting numbers from ``low`` to ``high`` inclusive.

    Args:
        kind: ``int`` or ``float``.
        low: smallest value allowed.
        high: largest value allowed.
        what: the expected value in words (default "a whole number" / "a number").

    Returns:
        A parser raising ``argparse.ArgumentTypeError`` like "expected a whole
        number from 0 to 99, got '150'".

    """
    wanted = f"{what or _NOUNS[kind]} from {low} to {high}"

    def parse(text: str) -> NumberT:
        try:
            value = parse_number(text, kind, what=wanted)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not low <= value <= high:
            msg = f"expected {wanted}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


HINT_SEPARATOR: Final = "\nhint: "
"""An argparse ``type=`` error may carry its own hint after this; the CLI prints it."""

URI_EXAMPLES: Final = "qemu+tcp://HOST/system, qemu+ssh://root@HOST/system or qemu:///system"
_DRIVERS: Final = ("qemu", "test")
_TRANSPORTS: Final = ("tcp", "ssh", "tls", "libssh", "libssh2", "unix", "ext")
_NEEDS_HOST: Final = frozenset({"tcp", "ssh", "tls", "libssh", "libssh2"})
_QEMU_PATHS: Final = ("/system", "/session")


def uri_problem(text: str) -> str:  # noqa: PLR0911  one return per rule, in order
    """What is wrong with ``text`` as a libvirt URI for a QEMU host, or "" if nothing.

    Checks the scheme first (``DRIVER[+TRANSPORT]``: the driver must be qemu, or
    libvirt's test driver; the transport one libvirt knows), then the host and
    port the transport needs, then the path (``/system`` or ``/session``), so
    a typo is named before anything tries to connect.

    Examples::

        qemu+tcp://kvm2/system      ""
        foo://bar/system            "unknown driver 'foo' in the scheme 'foo' ..."
        qemu+tcpp://kvm2/system     "unknown transport 'tcpp' ..."
        qemu+ssh:///system          "names no host ..."

    """
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or (not rest.startswith("//") and scheme != "test"):
        return f"{text!r} is not a libvirt URI"
    driver, plus, transport = scheme.partition("+")
    if driver not in _DRIVERS:
        return (
            f"{text!r}: unknown driver {driver!r} in the scheme {scheme!r}; vmotion migrates "
            "QEMU guests, so the scheme is qemu or qemu+TRANSPORT"
        )
    if plus and transport not in _TRANSPORTS:
        return (
            f"{text!r}: unknown transport {transport!r} in the scheme {scheme!r}; libvirt's "
            f"transports are {', '.join(_TRANSPORTS)}"
        )
    if driver == "test":
        return ""
    parts = urlsplit(text)
    try:
        _ = parts.port
    except ValueError:
        return f"{text!r}: the port in {parts.netloc!r} is not a number from 1 to 65535"
    if transport in _NEEDS_HOST and not parts.hostname:
        return f"{text!r} names no host; {transport} needs one (qemu+{transport}://HOST/system)"
    if parts.path not in _QEMU_PATHS:
        shown = f"the path is {parts.path!r}" if parts.path else "there is no path"
        return (
            f"{text!r}: {shown}; the QEMU driver's paths are /system "
            "(the system daemon) and /session"
        )
    return ""


def libvirt_uri(text: str) -> str:
    """An argparse ``type=`` for ``--to``/``--from``: ``text`` if ``uri_problem`` finds nothing.

    Raises:
        argparse.ArgumentTypeError: the problem, and examples as its hint.

    """
    problem = uri_problem(text)
    if problem:
        msg = f"{problem}{HINT_SEPARATOR}write e.g. {URI_EXAMPLES}"
        raise argparse.ArgumentTypeError(msg)
    return text


def domain_name(text: str) -> str:
    """An argparse ``type=`` for DOMAIN: a guest name, UUID or ID, not empty.

    libvirt would answer an empty name only after we connected (and the test
    driver not at all), so '' is refused here, before any host is touched.

    Raises:
        argparse.ArgumentTypeError: ``text`` is empty or only white space.

    """
    if not text.strip():
        msg = (
            f"the guest name is empty ({text!r}){HINT_SEPARATOR}give the guest's name, UUID "
            "or ID on the source (virsh list)"
        )
        raise argparse.ArgumentTypeError(msg)
    return text


def ping_address(text: str) -> str:
    """An argparse ``type=`` for ``--ping``: the guest's IPv4 unicast address.

    The probe sends ICMPv4 echo requests from a raw IPv4 socket and matches the
    replies by their source address, so a host name (its replies would come from
    the resolved address) or an IPv6 address would report every ping lost.

    Returns:
        The address in its normal form (what the replies' source is compared with).

    Raises:
        argparse.ArgumentTypeError: not an IPv4 address, or not unicast.

    """
    hint = f"{HINT_SEPARATOR}give the guest's IPv4 address, e.g. --ping 192.0.2.10"
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        msg = f"{text!r} is not an IP address (names are not resolved){hint}"
        raise argparse.ArgumentTypeError(msg) from None
    if not isinstance(addr, ipaddress.IPv4Address):
        msg = f"{text!r} is an IPv6 address; the ping probe sends ICMPv4 only{hint}"
        raise argparse.ArgumentTypeError(msg)
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        msg = f"{text!r} is not a unicast address{hint}"
        raise argparse.ArgumentTypeError(msg)
    return str(addr)


_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MAX_HOSTNAME: Final = 253


def host_problem(text: str) -> str:
    """What is wrong with ``text`` as a host to connect to (an IP address or a DNS name), or "".

    Examples::

        10.77.0.50          ""
        fe80::1             ""
        guest.lab           ""
        10.77.0.50:7000     "'10.77.0.50:7000' has a port; give the address only"
        bad_host!           "'bad_host!' is neither an IP address nor a host name"

    """
    word = text.strip()
    try:
        ipaddress.ip_address(word)
    except ValueError:
        pass
    else:
        return ""
    host, colon, port = word.rpartition(":")
    if colon and port.isdigit() and host:
        return f"{text!r} has a port; give the address only"
    labels = word.removesuffix(".").split(".")
    if (
        word
        and len(word) <= _MAX_HOSTNAME
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # 10.0.0.300 is a bad address, not a name
    ):
        return ""
    return f"{text!r} is neither an IP address nor a host name"


DEFAULT_SOURCE_URI_ENV: Final = "LIBVIRT_DEFAULT_URI"


def add_guest_and_hosts(parser: argparse.ArgumentParser, *, dest_help: str = "") -> None:
    """DOMAIN, ``--to URI`` and ``--from URI``: the same words on every command that moves."""
    parser.add_argument(
        "domain", metavar="DOMAIN", type=domain_name, help="guest name, UUID or ID on the source"
    )
    parser.add_argument(
        "--to",
        dest="dest_uri",
        required=True,
        type=libvirt_uri,
        metavar="URI",
        help=dest_help or "destination libvirt URI (qemu+tcp://, qemu+ssh://, qemu+tls://)",
    )
    add_source(parser)


def add_source(parser: argparse.ArgumentParser) -> None:
    """``--from URI``, defaulting to ``$LIBVIRT_DEFAULT_URI`` or ``qemu:///system``."""
    parser.add_argument(
        "--from",
        dest="source_uri",
        type=libvirt_uri,
        metavar="URI",
        help=f"source libvirt URI (default: ${DEFAULT_SOURCE_URI_ENV} or qemu:///system)",
    )


def positive_whole_seconds(text: str) -> int:
    """An argparse ``type=``: a whole number of seconds greater than 0."""
    return positive_number(int, what="a whole number of seconds")(text)


_UNITS_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now_s: float) -> float:
    """``--since``: a time ago (``90m``, ``12h``, ``7d``, ``2w``) or a date (``2026-12-01``).

    Args:
        text: what the user typed. A date without a zone is local time.
        now_s: the present (Unix seconds), for the relative forms.

    Returns:
        The moment, in Unix seconds.

    Raises:
        ValueError: neither form; the message shows both.

    """
    msg = f"expected a time ago like 90m, 12h, 7d or a date like 2026-12-01T10:00, got {text!r}"
    word = text.strip()
    if word[:-1].isdigit() and word[-1:] in _UNITS_S:
        return now_s - int(word[:-1]) * _UNITS_S[word[-1]]
    try:
        moment = dt.datetime.fromisoformat(word)
    except ValueError:
        raise ValueError(msg) from None
    return moment.timestamp()

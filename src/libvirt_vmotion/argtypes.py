"""Numbers typed on the command line: one parser for ``vmotion`` and ``vmotion bench``.

Pure: no I/O, no clock, no logging. ``parse_number`` says what is wrong in words
that read after an option name (``--timeout: expected a number of seconds
greater than 0, got '0'``); ``positive_number`` wraps it as an argparse
``type=``, whose error argparse prefixes with ``argument --timeout:``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Final, TypeVar

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

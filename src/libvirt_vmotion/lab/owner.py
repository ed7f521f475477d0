"""Which checkout a lab belongs to, and what ``lab up`` does with a healthy one.

Pure: no I/O, no clock, no logging. ``topology`` reads and writes the record.

A lab runs code of the checkout that built it: the hook shim on each host execs
that checkout's interpreter (``hooks.install``), and the reservation store and
``capacity.toml`` on each host hold what that checkout's tests left there. Two
checkouts with the same ``VMOTION_LAB_ID`` share one lab, so ``up`` in the second
one must not take a healthy lab as it finds it. It adopts the lab when nothing runs
there (hooks re-installed for this interpreter, per-host product state reset, as a
fresh build would leave them; no daemon restarts), and refuses with a hint when
guests run there: somebody is using it. The agent needs nothing: every controller
names its own interpreter to the agent (``VMOTION_AGENT_PYTHON``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

_KEY = "python = "


class UpAction(StrEnum):
    """What ``up`` does with a lab that is already healthy."""

    NOTHING = "nothing"
    """This checkout's lab: left as it is."""
    ADOPT = "adopt"
    """Another checkout's (or an unrecorded) idle lab: made this checkout's in place."""
    REFUSE = "refuse"
    """Another checkout's lab with guests running: left alone, with a hint."""


@dataclass(frozen=True, slots=True)
class UpPlan:
    """The decision and why, in words for the user."""

    action: UpAction
    reason: str


def build_owner_record(python: str) -> str:
    """Return the text of the owner record for a lab built or adopted by ``python``."""
    return f"{_KEY}{python}\n"


def parse_owner_record(text: str) -> str | None:
    """Return the interpreter an owner record names, or ``None`` if it names none."""
    for line in text.splitlines():
        if line.startswith(_KEY) and line[len(_KEY) :].strip():
            return line[len(_KEY) :].strip()
    return None


def same_checkout(a: str, b: str) -> bool:
    """True if two interpreter paths are the same venv (``python`` and ``python3`` are)."""
    return PurePath(a).parent == PurePath(b).parent


def plan_up_of_healthy_lab(
    *,
    owner: str | None,
    python: str,
    running: Mapping[str, tuple[str, ...]],
    lab_id: str,
    lab_cmd: str,
) -> UpPlan:
    """Decide what ``up`` does with a healthy lab.

    Args:
        owner: the interpreter the lab's owner record names (``None``: no record,
            a lab built before records existed, or a record that names nothing).
        python: this checkout's interpreter (``sys.executable``).
        running: running domains per lab host name.
        lab_id: the lab's ``VMOTION_LAB_ID``, for the hint.
        lab_cmd: how the user runs lab commands (``./run lab``), for the hint.

    Returns:
        ``NOTHING`` for this checkout's lab; ``ADOPT`` for an idle lab of another or an
        unknown checkout; ``REFUSE`` when another checkout's lab has guests running.

    """
    if owner is not None and same_checkout(owner, python):
        return UpPlan(UpAction.NOTHING, "lab already up and healthy; nothing to do")
    whose = f"another checkout's ({owner})" if owner else "a lab of unrecorded origin"
    busy = {host: doms for host, doms in running.items() if doms}
    if busy:
        guests = "; ".join(f"{host}: {', '.join(doms)}" for host, doms in sorted(busy.items()))
        return UpPlan(
            UpAction.REFUSE,
            f"lab {lab_id!r} is up as {whose} and in use (running guests: {guests}); "
            "its hooks run that checkout's code, so it is not adopted while guests run. "
            f"Use a lab of your own (VMOTION_LAB_ID=<1-8 lowercase letters/digits>, not "
            f"{lab_id!r}), or finish that work and run `{lab_cmd} down` first",
        )
    return UpPlan(
        UpAction.ADOPT,
        f"lab up and healthy as {whose}, no guests running: adopting it for {python} "
        "(hooks re-installed, reservations and capacity files reset)",
    )

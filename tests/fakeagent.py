"""A fake of our agent (``adapters.ops.AgentPort``) shared by the test tiers.

On the import path through pytest's ``pythonpath = ["tests"]`` (pyproject), so a
test module says ``from fakeagent import FakeAgent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class FakeAgent:
    """Answers every call with ``reply`` and records what was sent.

    Attributes:
        reply: the raw result of every call.
        label: the host it stands for (errors name it).
        sent: each call's operation and arguments, in order.

    """

    reply: dict[str, object]
    label: str = "hostb"
    sent: list[tuple[str, Mapping[str, object]]] = field(default_factory=list)

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        """Record ``op`` and ``args``; answer ``reply``."""
        del timeout_s
        self.sent.append((op, dict(args or {})))
        return self.reply

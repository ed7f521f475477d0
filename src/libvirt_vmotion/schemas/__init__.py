"""JSON Schemas (draft 2020-12) of every JSON line the CLI prints, shipped in the package.

Pure data: ``load_schema`` reads the package's own files. Each line names its
``event``; ``SCHEMA_OF_EVENT`` says which schema describes it. Every document
carries ``report_version`` (``report.REPORT_VERSION``) and ``ts``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Final

SCHEMA_OF_EVENT: Final = {
    "progress": "progress",
    "report": "report",
    "check": "check",
    "netcheck": "netcheck",
    "status": "status",
    "cancelled": "status",
    "history": "history",
    **dict.fromkeys(
        (
            "evacuation-plan",
            "guest-started",
            "guest-progress",
            "evacuation-progress",
            "guest-bandwidth",
            "guest-finished",
            "evacuation-report",
            "maintenance",
        ),
        "evacuate",
    ),
}


def load_schema(event: str) -> dict[str, object]:
    """The schema of a line whose ``event`` is ``event``.

    Raises:
        KeyError: no document of ours has that event.

    """
    name = SCHEMA_OF_EVENT[event]
    text = files(__name__).joinpath(f"{name}.schema.json").read_text()
    loaded: dict[str, object] = json.loads(text)
    return loaded

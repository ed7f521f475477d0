"""Our CLI run in the lab's client namespace, and its JSON output read back (lab tests).

The lab tests drive ``vmotion`` the way users run it against the lab: in the
client network namespace, with the lab's agent settings (``guestctl.client_command``
sets ``VMOTION_AGENT_SSH``/``VMOTION_AGENT_PYTHON`` from the lab's ssh client
config, as ``vmotion lab exec`` does), so the CLI reaches each host's agent over
that host's sshd: the production path.

This module sits beside ``guestcheck`` (not in ``tests/lab``) because only
``tests/`` is on the import path (``pythonpath`` in pyproject; importlib mode).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping

import jsonschema

from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.schemas import load_schema

CLIENT_TIMEOUT_S = 300.0
"""Default longest wait for one CLI run (a hang fails the test instead of the whole run)."""


def client_argv(*args: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The command line of ``vmotion args`` in the client namespace (for ``Popen``).

    ``env`` adds to, or overrides, the lab's agent settings.
    """
    argv = guestctl.self_command(*args)
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
    return guestctl.client_command(argv)


def vmotion_in_client(
    *args: str, timeout_s: float = CLIENT_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``vmotion args`` in the client namespace; its output captured, any exit code."""
    return subprocess.run(
        client_argv(*args, env=env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The last line printed, as a JSON object (the report, or the one document)."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr}"
    data = json.loads(lines[-1])
    assert isinstance(data, dict)
    return data


def checked_last_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """``last_json``, once every line printed validated against its event's shipped schema."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr}"
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for line in lines:
        doc = json.loads(line)
        jsonschema.Draft202012Validator(load_schema(doc["event"]), format_checker=checker).validate(
            doc
        )
    return last_json(result)

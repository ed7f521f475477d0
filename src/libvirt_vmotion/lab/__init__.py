"""The two-host namespace lab: switch, two libvirt hosts, a client, and the test guest."""

import os


def command_name() -> str:
    """How the user invokes us, for hints we print: ``./run`` sets VMOTION_PROG."""
    return os.environ.get("VMOTION_PROG", "vmotion")

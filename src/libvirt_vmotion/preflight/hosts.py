"""Pre-flight checks on the pair of hosts: two distinct machines, our agent answering.

Pure: no I/O, no clock, no logging. Checks ``same-host`` and ``dest-agent``.
"""

from __future__ import annotations

from typing import Final

from libvirt_vmotion.preflight.facts import PreflightFacts
from libvirt_vmotion.preflight.result import CheckResult, Verdict, bad, ok


def check_same_host(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Source and destination must be different hosts (hostname and host UUID)."""
    same_name = f.source.hostname == f.dest.hostname
    same_uuid = bool(f.source.host_uuid) and f.source.host_uuid == f.dest.host_uuid
    observed = f"hostnames {f.source.hostname}/{f.dest.hostname}, host UUIDs " + (
        "equal" if same_uuid else "differ"
    )
    if same_name or same_uuid:
        return (
            bad(
                "same-host",
                Verdict.BLOCKER,
                f"{f.source.uri} and {f.dest.uri} are the same host.",
                observed=observed,
                required="distinct hostname and host UUID",
                hint="Pick another destination; if they really are two hosts, give them "
                "distinct hostnames and host_uuid in libvirtd.conf.",
            ),
        )
    return (ok("same-host", f"{f.source.hostname} -> {f.dest.hostname}", observed=observed),)


_AGENT_CHECKS: Final = (
    "bridge-ports, inbound-slots, reservation, hugepages, MemAvailable, disk paths"
)


def check_agent(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Say so when our package on the destination could not be reached."""
    if f.agent.available:
        return (ok("dest-agent", f"libvirt-vmotion answers on {f.dest.hostname}"),)
    return (
        bad(
            "dest-agent",
            Verdict.WARNING,
            f"libvirt-vmotion could not run on {f.dest.hostname}, so these were not checked "
            f"there: {_AGENT_CHECKS}. Reason: {f.agent.error}",
            observed="agent unavailable",
            required="libvirt-vmotion installed on the destination, reachable over ssh",
            hint="Install libvirt-vmotion there (and its hook: python -m libvirt_vmotion hooks "
            "install) and allow key-based ssh as root from here.",
        ),
    )

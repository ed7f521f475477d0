"""Pre-flight checks on the guest's network attachments at the destination.

Pure: no I/O, no clock, no logging. Checks ``network`` (each NIC's bridge or
libvirt network exists there, is up, has an uplink and a large enough MTU, from
what libvirt's remote API tells, so it works without our agent), ``bridge-ports``
(uplink ports forward, learn and flood) and folds in ``netcheck``'s bridge
verdicts (the agent's view of both hosts) under their own names, leaving out
those whose question the first two already answer (``NETCHECK_COVERED``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from libvirt_vmotion.preflight.facts import BridgeFacts, NicFacts, PreflightFacts, StpState
from libvirt_vmotion.preflight.result import (
    CheckResult,
    Quantity,
    Unit,
    Verdict,
    bad,
    ok,
    skip_hint,
)


def _nic_bridge(f: PreflightFacts, nic: NicFacts) -> tuple[str, CheckResult | None]:
    """Resolve the bridge a NIC lands on at the destination, or a result saying why not."""
    subject = f"NIC {nic.mac}"
    if nic.kind == "network":
        net = f.networks.get(nic.source)
        if net is None or not net.exists:
            return "", bad(
                "network",
                Verdict.BLOCKER,
                f"libvirt network '{nic.source}' does not exist on {f.dest.hostname}.",
                observed="missing",
                required=f"network {nic.source}, active",
                hint=f"Define and start it there (virsh -c {f.dest.uri} net-define/net-start).",
                subject=subject,
            )
        if not net.active:
            return "", bad(
                "network",
                Verdict.BLOCKER,
                f"libvirt network '{nic.source}' on {f.dest.hostname} is not active.",
                observed="inactive",
                required="active",
                hint=f"virsh -c {f.dest.uri} net-start {nic.source}",
                subject=subject,
            )
        return net.bridge, None
    return nic.source, None


def check_networks(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Every NIC's bridge/network exists on the destination, is up, has an uplink and MTU."""
    return tuple(_check_nic(f, nic) for nic in f.guest.nics)


def _check_nic(f: PreflightFacts, nic: NicFacts) -> CheckResult:
    """One NIC's ``network`` result: its bridge at the destination, and that bridge's state."""
    subject = f"NIC {nic.mac}"
    if nic.kind not in {"bridge", "network"}:
        return bad(
            "network",
            Verdict.WARNING,
            f"NIC {nic.mac} is of type '{nic.kind}'; we cannot verify its attachment "
            f"on {f.dest.hostname}.",
            observed=nic.kind,
            required="bridge or network",
            hint="Make sure the destination has the same attachment.",
            subject=subject,
        )
    bridge_name, problem = _nic_bridge(f, nic)
    if problem is not None:
        return problem
    br = f.bridges.get(bridge_name)
    where = f"bridge {bridge_name} on {f.dest.hostname}"
    if br is None:
        return bad(
            "network",
            Verdict.WARNING,
            f"Could not inspect {where} (libvirt's interface driver did not answer).",
            hint="Check by hand that the bridge exists there.",
            subject=subject,
        )
    need_mtu = nic.mtu or 1500
    # The MTU as numbers (bytes) whenever the bridge's is known: the bridge's against the NIC's.
    mtu = None if br.mtu is None else Quantity(Unit.BYTES, observed=br.mtu, required=need_mtu)
    fault, hint = _bridge_fault(br, bridge_name, need_mtu=need_mtu)
    if not fault:
        return ok(
            "network",
            f"{where}: up, uplinks {', '.join(br.uplink_names())}, MTU {br.mtu}",
            subject=subject,
            quantity=mtu,
        )
    return bad(
        "network",
        Verdict.BLOCKER,
        f"Destination {where} {fault}; '{f.guest.name}' {subject} uses it.",
        observed=fault,
        required=f"bridge {bridge_name} up with an uplink, MTU >= {need_mtu}",
        hint=hint,
        subject=subject,
        quantity=mtu,
    )


def _bridge_fault(br: BridgeFacts, name: str, *, need_mtu: int) -> tuple[str, str]:
    """What is wrong with a destination bridge for a NIC, and what to do ("" if nothing)."""
    if not br.exists:
        return "does not exist", "Create the bridge there with the same name."
    if not br.up:
        return "is down", f"Bring it up: ip link set {name} up."
    if not br.uplinks():
        return (
            "has no uplink port (guests there could not reach the network)",
            "Attach the host's uplink NIC to the bridge.",
        )
    if br.mtu is not None and br.mtu < need_mtu:
        return (
            f"has MTU {br.mtu}, below the guest NIC's {need_mtu}",
            "Raise the bridge MTU there, or lower the guest's.",
        )
    return "", ""


def check_bridge_ports(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Uplink ports must forward, learn and flood (bridge port flags, from the agent)."""
    bridges = sorted(
        {b.name for b in f.bridges.values() if b.exists}
        & ({n.source for n in f.guest.nics if n.kind == "bridge"}
           | {f.networks[n.source].bridge for n in f.guest.nics
              if n.kind == "network" and n.source in f.networks})
    )  # fmt: skip
    if not bridges:
        return ()
    if not f.agent.available:
        return (
            bad(
                "bridge-ports",
                Verdict.WARNING,
                f"Could not check port forwarding/learning/flooding of {', '.join(bridges)} on "
                f"{f.dest.hostname}: {f.agent.error}",
                hint="Install libvirt-vmotion on the destination so it can check.",
            ),
        )
    results = []
    for name in bridges:
        uplinks = set(f.bridges[name].uplink_names())
        for port in f.agent.bridge_ports.get(name, ()):
            if port.name not in uplinks:
                continue
            forwarding = port.stp_state is StpState.FORWARDING
            faults = []
            if not forwarding:
                faults.append(f"state {port.stp_state.name.lower()}")
            if not port.learning:
                faults.append("learning off")
            if not port.unicast_flood:
                faults.append("unicast flooding off")
            subject = f"{name}/{port.name}"
            if not faults:
                results.append(
                    ok(
                        "bridge-ports",
                        f"{subject}: forwarding, learning, flooding",
                        subject=subject,
                    )
                )
                continue
            verdict = Verdict.BLOCKER if not forwarding else Verdict.WARNING
            results.append(
                bad(
                    "bridge-ports",
                    verdict,
                    f"Uplink {subject} on {f.dest.hostname}: {', '.join(faults)}.",
                    observed=", ".join(faults),
                    required="forwarding, learning on, unicast flooding on",
                    hint=f"Fix the port: bridge link set dev {port.name} learning on flood on "
                    "(state follows STP).",
                    subject=subject,
                )
            )
    return tuple(results)


NETCHECK_COVERED: Final = frozenset(
    {"bridge-exists", "bridge-up", "bridge-uplink", "bridge-mtu", "uplink-learning"}
)
"""``netcheck`` verdicts whose question ``network`` and ``bridge-ports`` answer in ``check``.

``check`` asks them from libvirt's remote API (no agent needed) and judges the
bridge against the guest's NIC; ``vmotion netcheck`` asks the agents and judges
it against the source's bridge. One report does not ask twice."""


def check_bridge_setup(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """The network pre-flight's bridge verdicts (``netcheck``), each under its own name.

    Can the destination's switch learn the move (STP delay, flooding of
    broadcasts, ageing), is the bridge consistent with the source (VLAN
    filtering), is the bridge's MAC pinned on both hosts, will we notify the
    switches. Those ``network``/``bridge-ports`` already cover are left out. In
    the check report a verdict shows its host as ``observed`` (an ok one also
    in its message) and its hint ends with the ``--skip-check`` override.
    """
    return tuple(
        replace(
            r,
            message=r.message if r.hint else f"{r.host}: {r.message}",
            observed=r.host,
            hint=f"{r.hint} {skip_hint(r.name)}" if r.hint else "",
        )
        for r in f.bridge_checks
        if r.name not in NETCHECK_COVERED
    )

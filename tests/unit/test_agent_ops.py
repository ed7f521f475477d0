# ruff: noqa: E501, S106  the request/reply tables read best one row per case; tokens are test data
"""The agent's operation registry: typed requests and replies, checked on both ends."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from fakeagent import FakeAgent
from libvirt_vmotion.adapters import ops
from libvirt_vmotion.adapters.agent import RemoteHost, serve

WIRE_NAMES = {
    "hello", "bridge_facts", "fdb_query", "fdb_flush", "announce", "host-facts", "reserve",
    "release", "reservations", "guest-memory", "storage-facts", "disk-precreate", "disk-remove",
    "share-probe", "link-sink", "link-probe", "guard-state", "link-route", "maintenance",
    "tls-facts", "free-stuck-prepare",
}  # fmt: skip


def test_the_operation_names_on_the_wire_are_unchanged() -> None:
    assert set(ops.REGISTRY) == WIRE_NAMES


@pytest.mark.parametrize("name", sorted(WIRE_NAMES))
def test_every_operation_is_typed_and_its_handler_exists(name: str) -> None:
    op = ops.operation(name)
    assert op.name == name
    for message in (op.request, op.reply):
        assert dataclasses.is_dataclass(message)
        assert message.__dataclass_params__.frozen  # type: ignore[attr-defined]
    module, _, function = op.handler.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_an_unknown_operation_is_refused_naming_the_known_ones() -> None:
    reply = serve("hibernate", "{}")
    assert reply["ok"] is False
    assert reply["error"] == "unknown agent operation 'hibernate'"
    assert "hello" in str(reply["hint"])
    assert "reserve" in str(reply["hint"])


@pytest.mark.parametrize(
    ("op", "args", "error"),
    [
        ("release", '{"id": 5}', "agent operation 'release': request: 'id' must be a string, not a JSON number"),
        ("reserve", '{"id": "r1"}', "agent operation 'reserve': request lacks 'domain'"),
        ("hello", '{"verbose": true}', "agent operation 'hello': request has unknown key(s) 'verbose'"),
        ("disk-remove", '{"paths": "/etc/passwd"}', "'paths' must be an array, not a JSON string"),
        ("guest-memory", '{"domain": "g", "memory_bytes": true}', "'memory_bytes' must be an integer, not a JSON boolean"),
    ],
)  # fmt: skip
def test_the_agent_refuses_a_request_that_does_not_fit_before_running_it(
    op: str, args: str, error: str
) -> None:
    reply = serve(op, args)
    assert reply["ok"] is False
    assert error in str(reply["error"])


def test_the_client_builds_the_request_and_validates_the_reply() -> None:
    agent = FakeAgent({"id": "r1", "domain": "web01", "state": "reserved", "expires_s": 60})
    request = ops.ReserveRequest(reservation_id="r1", domain="web01", memory_bytes=1 << 30, vcpus=0)
    reply = ops.RESERVE.call(agent, request)
    # A key the handler requires is sent even at zero; one left at a shared default is not.
    assert agent.sent == [
        ("reserve", {"id": "r1", "domain": "web01", "memory_bytes": 1 << 30, "vcpus": 0})
    ]
    assert reply == ops.ReserveReply(
        reservation_id="r1", domain="web01", state="reserved", expires_s=60.0
    )


def test_a_reply_that_does_not_fit_is_a_clear_error_naming_the_field() -> None:
    agent = FakeAgent({"released": "all of them"})
    with pytest.raises(
        ops.AgentUnavailable,
        match=r"on hostb: agent operation 'release': reply: 'released' must be an integer",
    ):
        ops.RELEASE.call(agent, ops.ReleaseRequest(reservation_id="r1"))


def test_nested_replies_are_validated_into_their_dataclasses() -> None:
    agent = FakeAgent(
        {
            "bridge_ports": {"br0": [{"port": "eth0", "state": "forwarding", "learning": True, "flooding": True}]},
            "reservation": {"reserved_memory_bytes": 0, "reserved_vcpus": 0, "inbound_active": 0, "inbound_limit": 2},
            "newer_agent_field": 1,
        }
    )  # fmt: skip
    reply = ops.HOST_FACTS.call(agent, ops.HostFactsRequest(bridges=("br0",)))
    assert reply.bridge_ports["br0"] == (
        ops.PortFlagsReply(port="eth0", state="forwarding", learning=True, flooding=True),
    )
    assert reply.reservation is not None
    assert reply.reservation.inbound_limit == 2
    bad = FakeAgent({"bridge_ports": {"br0": [{"port": "eth0", "state": "forwarding"}]}})
    with pytest.raises(
        ops.AgentUnavailable, match=r"'bridge_ports'\['br0'\]\[0\] lacks 'learning'"
    ):
        ops.HOST_FACTS.call(bad, ops.HostFactsRequest())


def test_a_request_round_trips_through_the_agents_validation() -> None:
    request = ops.LinkSinkRequest(bind_host="10.0.0.2", allow_from=("10.0.0.1",), token="ab")
    wire = ops.to_json(request)
    assert wire == {"bind_host": "10.0.0.2", "allow_from": ["10.0.0.1"], "token": "ab"}
    assert ops.LINK_SINK.parse_request(wire) == request


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'hello' is registered twice"):
        ops.register(ops.Operation("hello", ops.Empty, ops.HelloReply, "x:y"))


def test_typed_operations_through_a_real_agent_on_this_host(tmp_path: Path) -> None:
    # Read-only operations, end to end: request built here, validated by the agent,
    # handled there, reply validated here.
    host = RemoteHost.for_uri("qemu:///system")
    assert ops.HELLO.call(host, ops.Empty()).version
    assert ops.LINK_ROUTE.call(host, ops.RouteRequest(host="127.0.0.1")).address == "127.0.0.1"
    (lo,) = ops.BRIDGE_FACTS.call(host, ops.BridgesRequest(bridges=("lo",))).bridges
    assert (lo["name"], lo["exists"]) == ("lo", False)  # a loopback is no bridge
    missing = str(tmp_path / "web01.qcow2")
    paths = ops.STORAGE_FACTS.call(host, ops.StorageFactsRequest(paths=(missing,))).paths
    assert paths[missing].exists is False
    assert paths[missing].free_bytes is not None

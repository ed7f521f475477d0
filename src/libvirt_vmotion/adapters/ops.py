"""The agent's operations: a registry of named operations with typed requests and replies.

Pure: no I/O, no clock, no logging. Each operation is one ``Operation`` entry:
its wire name, a frozen request dataclass, a frozen reply dataclass, and where
its handler lives on the host (``module:function``, imported only there, only
when called: the agent starts fast, and this module stays below the layers
that implement the operations). Both ends validate what crosses the wire:

- the client builds the request object (``Operation.call``/``start``), sends it
  as JSON and validates the reply into the reply dataclass;
- the agent (``agent.serve``) refuses an unknown operation, validates the
  request into its dataclass, then calls the handler.

The wire format stays JSON objects; a field whose JSON key is not a good Python
name says so in its metadata (``json_key("bytes")``). A request refuses keys it
does not know; a reply ignores them (an agent one version ahead may add some).
A request field left at its default is not sent, so the handler's own default
applies: a request field has a default only where its handler has the same one,
and none where the handler requires the key.

Adding an operation (e.g. ``maintenance`` in ``reserve.hostops``)::

    @dataclass(frozen=True, slots=True)
    class MaintenanceRequest:
        enter: bool

    @dataclass(frozen=True, slots=True)
    class MaintenanceReply:
        state: str

    MAINTENANCE = register(Operation(
        "maintenance", MaintenanceRequest, MaintenanceReply,
        "libvirt_vmotion.reserve.hostops:op_maintenance",
    ))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from libvirt_vmotion.errors import VmotionError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Req = TypeVar("Req", bound="DataclassInstance")
Rep = TypeVar("Rep", bound="DataclassInstance")
_M = TypeVar("_M", bound="DataclassInstance")
_Call_co = TypeVar("_Call_co", covariant=True)


class AgentUnavailable(VmotionError):
    """Our package could not be run on that host (no ssh ...), or its reply is unusable."""


class AgentTimedOut(AgentUnavailable):
    """The request went out and no answer came within its time (it may have run there)."""


class AgentOperationFailed(VmotionError):
    """The agent ran but the operation failed (or was refused) there; message and hint from it."""


class InvalidMessage(ValueError):
    """A request or reply does not fit its dataclass; the message names the field."""


def json_key(key: str) -> dict[str, str]:
    """Field metadata: the field's key on the wire, where it is not its Python name."""
    return {"json": key}


# ---------------------------------------------------------------- validation


def _json_type(value: object) -> str:
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"))
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def _check(tp: Any, value: object, where: str) -> object:  # noqa: ANN401, PLR0911  a hint; one return per JSON shape
    """``value`` as ``tp`` (a JSON array becomes a tuple), or InvalidMessage."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is object:
        return value
    if origin in {typing.Union, types.UnionType}:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(inner, value, where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_json(tp, value, what=where, strict=False)
    if origin is tuple and isinstance(value, list):
        return tuple(_check(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in {Mapping, dict} and isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            msg = f"{where} must be an object with string keys"
            raise InvalidMessage(msg)
        return {k: _check(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if _is_scalar(tp, value):
        return float(value) if tp is float else value  # type: ignore[arg-type]  # checked
    msg = f"{where} must be {_describe(tp)}, not a JSON {_json_type(value)}"
    raise InvalidMessage(msg)


def _is_scalar(tp: object, value: object) -> bool:
    """True if ``value`` is a JSON scalar of type ``tp`` (an integer is a number; no bools)."""
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, int | float)
    return (tp is int and isinstance(value, int)) or (tp is str and isinstance(value, str))


def _describe(tp: object) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "an array"
    if origin in {Mapping, dict}:
        return "an object"
    names: dict[object, str] = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
    }
    return names.get(tp, str(tp))


def from_json(cls: type[_M], data: object, *, what: str, strict: bool) -> _M:
    """Validate a decoded JSON object into the dataclass ``cls``.

    Args:
        cls: a request or reply dataclass.
        data: the decoded JSON.
        what: how messages name it (``"request of agent operation 'reserve'"``).
        strict: refuse keys ``cls`` does not know (requests); replies ignore them.

    Raises:
        InvalidMessage: not an object, a required key missing, a value of the
            wrong type, or (strict) an unknown key.

    """
    if not isinstance(data, Mapping):
        msg = f"{what} is a JSON {_json_type(data)}, not an object"
        raise InvalidMessage(msg)
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    known: set[str] = set()
    for f in dataclasses.fields(cls):
        key = f.metadata.get("json", f.name)
        known.add(key)
        if key in data:
            values[f.name] = _check(hints[f.name], data[key], f"{what}: {key!r}")
        elif f.default is MISSING and f.default_factory is MISSING:
            msg = f"{what} lacks {key!r}"
            raise InvalidMessage(msg)
    unknown = sorted(set(data) - known)
    if strict and unknown:
        msg = f"{what} has unknown key(s) {', '.join(map(repr, unknown))}"
        raise InvalidMessage(msg)
    return cls(**values)


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_json(message: DataclassInstance) -> dict[str, object]:
    """A request or reply as a JSON object; fields left at their default are left out.

    Leaving defaults out keeps the wire what a caller asked for: the handler's
    own default applies, exactly as before the registry.
    """
    out: dict[str, object] = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        if f.default_factory is not MISSING and value == f.default_factory():
            continue
        out[f.metadata.get("json", f.name)] = _plain(value)
    return out


# ---------------------------------------------------------------- the registry


class AgentPort(Protocol):
    """What calls an operation on a host (``agent.RemoteHost``, or a test's fake)."""

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        """Run ``op`` on the host; its raw result."""
        ...


class StartingPort(Protocol[_Call_co]):
    """What starts an operation on a host without waiting (``agent.RemoteHost.start``)."""

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> _Call_co:
        """Start ``op`` on the host."""
        ...


@dataclass(frozen=True, slots=True)
class Operation(Generic[Req, Rep]):
    """One agent operation: its name, its typed request and reply, where it runs.

    Attributes:
        name: the operation's name on the wire (``agent OP``).
        request: the request dataclass (validated by the agent before the handler runs).
        reply: the reply dataclass (validated by the client).
        handler: ``module:function`` on the host, taking the validated JSON
            arguments and returning the JSON reply.

    """

    name: str
    request: type[Req]
    reply: type[Rep]
    handler: str

    def call(self, agent: AgentPort, request: Req, *, timeout_s: float = 30.0) -> Rep:
        """Run the operation on ``agent``'s host; its reply, validated.

        Raises:
            AgentUnavailable: not reachable, or the reply does not fit ``reply``.
            AgentOperationFailed: it ran and failed (or refused the request).

        """
        return self.parse_reply(
            agent.call(self.name, to_json(request), timeout_s=timeout_s),
            host=str(getattr(agent, "label", "the host")),
        )

    def start(
        self, agent: StartingPort[_Call_co], request: Req, *, timeout_s: float = 30.0
    ) -> _Call_co:
        """Start the operation on ``agent``'s host; ``parse_reply`` its call's result."""
        return agent.start(self.name, to_json(request), timeout_s=timeout_s)

    def parse_request(self, args: Mapping[str, object]) -> Req:
        """The agent's side: the request, validated (unknown keys refused).

        Raises:
            AgentOperationFailed: the arguments do not fit ``request``.

        """
        try:
            return from_json(
                self.request, args, what=f"agent operation {self.name!r}: request", strict=True
            )
        except InvalidMessage as exc:
            raise AgentOperationFailed(
                str(exc), hint="Run the same libvirt-vmotion version on both hosts."
            ) from exc

    def parse_reply(self, result: Mapping[str, object], *, host: str) -> Rep:
        """The client's side: the reply, validated.

        Raises:
            AgentUnavailable: the reply does not fit ``reply``.

        """
        try:
            return from_json(
                self.reply, result, what=f"agent operation {self.name!r}: reply", strict=False
            )
        except InvalidMessage as exc:
            msg = f"Could not use the answer of libvirt-vmotion on {host}: {exc}"
            raise AgentUnavailable(
                msg, hint=f"Install the same libvirt-vmotion version on {host} as here."
            ) from exc


REGISTRY: Final[dict[str, Operation[Any, Any]]] = {}
"""Every agent operation by name (``register`` adds one)."""


def register(op: Operation[Req, Rep]) -> Operation[Req, Rep]:
    """Add ``op`` to the registry and return it.

    Raises:
        ValueError: an operation of that name is registered already.

    """
    if op.name in REGISTRY:
        msg = f"agent operation {op.name!r} is registered twice"
        raise ValueError(msg)
    REGISTRY[op.name] = op
    return op


def operation(name: str) -> Operation[Any, Any]:
    """The registered operation ``name``.

    Raises:
        AgentOperationFailed: no such operation (the hint lists the known ones).

    """
    found = REGISTRY.get(name)
    if found is None:
        msg = f"unknown agent operation {name!r}"
        raise AgentOperationFailed(msg, hint=f"known: {', '.join(sorted(REGISTRY))}")
    return found


# ---------------------------------------------------------------- the operations

_Rows = tuple[Mapping[str, object], ...]


@dataclass(frozen=True, slots=True)
class Empty:
    """A request without arguments."""


@dataclass(frozen=True, slots=True)
class HelloReply:
    """``hello``: who answers."""

    version: str
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class BridgesRequest:
    """``bridge_facts``: the bridges to read."""

    bridges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BridgeFactsReply:
    """``bridge_facts``: each bridge as ``facts.BridgeFacts.as_dict``."""

    host: str
    bridges: _Rows = ()


@dataclass(frozen=True, slots=True)
class FdbRequest:
    """``fdb_query`` / ``fdb_flush``: a bridge and MACs (flush: keep entries on a port)."""

    bridge: str
    macs: tuple[str, ...] = ()
    keep_port: str = ""


@dataclass(frozen=True, slots=True)
class FdbQueryReply:
    """``fdb_query``: the entries found."""

    host: str = ""
    entries: _Rows = ()


@dataclass(frozen=True, slots=True)
class FdbFlushReply:
    """``fdb_flush``: the entries removed."""

    host: str = ""
    removed: _Rows = ()


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """``announce`` (see ``cutover.announce.op_announce``)."""

    domain: str
    nics: _Rows = ()
    count: int = 3
    interval_ms: int = 50
    libvirt_uri: str = ""
    wait_for_resume: bool = True
    timeout_s: float = 600.0
    poll_ms: int = 5
    verify_timeout_ms: int = 2000
    claim_fdb: bool = True


@dataclass(frozen=True, slots=True)
class AnnounceReply:
    """``announce``: whether the guest resumed here, what was sent and verified."""

    resumed: bool
    detail: str = ""
    resumed_at_wall_s: float | None = None
    resume_poll_ms: float | None = None
    fdb_claimed: _Rows = ()
    sent: _Rows = ()
    fdb: _Rows = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostFactsRequest:
    """``host-facts``: bridges whose port flags to read, paths to look for."""

    bridges: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PortFlagsReply:
    """One bridge port's forwarding flags, as ``host-facts`` reads them (netlink)."""

    port: str
    state: str
    learning: bool
    flooding: bool


@dataclass(frozen=True, slots=True)
class HostFactsReply:
    """``host-facts``: what only the host knows (see ``reserve.hostops``)."""

    hostname: str = ""
    mem_available_bytes: int | None = None
    hugepages_free_bytes: int | None = None
    bridge_ports: Mapping[str, tuple[PortFlagsReply, ...]] = field(default_factory=dict)
    paths_exist: Mapping[str, bool] = field(default_factory=dict)
    reservation: ReservationsReply | None = None


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """``reserve``: memory, vCPUs and an inbound slot for one incoming guest."""

    reservation_id: str = field(metadata=json_key("id"))
    domain: str
    memory_bytes: int
    vcpus: int
    owner: str = ""


@dataclass(frozen=True, slots=True)
class ReserveReply:
    """``reserve``: the reservation's row and the host's longest lease."""

    reservation_id: str = field(metadata=json_key("id"))
    domain: str
    state: str
    expires_s: float
    longest_lease_s: float | None = None
    owner: str = ""
    memory_bytes: int = 0
    vcpus: int = 0
    created_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """``release``: one reservation by id, or all of one domain."""

    reservation_id: str = field(default="", metadata=json_key("id"))
    domain: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    """``release``: how many were released."""

    released: int


@dataclass(frozen=True, slots=True)
class MaintenanceMark:
    """A host's maintenance mark (``vmotion maintenance enter``)."""

    since_epoch_s: int = 0
    since_utc: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class ReservationsReply:
    """``reservations``: what the store holds and what the host allows."""

    reserved_memory_bytes: int
    reserved_vcpus: int
    inbound_active: int
    inbound_limit: int
    memory_limit_bytes: int | None = None
    vcpu_limit: int | None = None
    reservations: _Rows = ()
    maintenance: MaintenanceMark | None = None


@dataclass(frozen=True, slots=True)
class TlsFileReply:
    """One file of a host's migration TLS directory (``tls-facts``)."""

    present: bool
    error: str = ""
    pem: str = ""
    public_key_sha256: str = ""


@dataclass(frozen=True, slots=True)
class TlsFactsReply:
    """``tls-facts``: the host's migration certificates, as QEMU finds them (no private key)."""

    hostname: str = ""
    qemu_conf: str = ""
    qemu_conf_error: str = ""
    cert_dir: str = ""
    cert_dir_setting: str = ""
    verify_clients: bool = True
    migration_host: str = ""
    files: Mapping[str, TlsFileReply] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MaintenanceRequest:
    """``maintenance``: enter, exit, or read the host's mark."""

    action: str
    by: str


@dataclass(frozen=True, slots=True)
class MaintenanceReply:
    """``maintenance``: the host and its mark after the action (None: not in maintenance)."""

    hostname: str
    maintenance: MaintenanceMark | None = None


@dataclass(frozen=True, slots=True)
class GuestMemoryRequest:
    """``guest-memory``: a running guest and its RAM size."""

    domain: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class GuestMemoryReply:
    """``guest-memory``: guest RAM resident on this host."""

    resident_bytes: int
    pid: int


@dataclass(frozen=True, slots=True)
class StorageFactsRequest:
    """``storage-facts``: disk paths, and the share probe to look for."""

    paths: tuple[str, ...] = ()
    token: str = ""
    probed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathFactsReply:
    """``storage-facts``: one path on this host."""

    exists: bool
    fs_type: str = ""
    free_bytes: int | None = None
    shared: bool | None = None
    """Whether the source's share probe is visible here (None: not probed)."""


@dataclass(frozen=True, slots=True)
class StorageFactsReply:
    """``storage-facts``: per path, and the host's lock manager."""

    paths: Mapping[str, PathFactsReply] = field(default_factory=dict)
    lock_manager: str = ""


@dataclass(frozen=True, slots=True)
class DisksRequest:
    """``disk-precreate``: the images to create."""

    disks: _Rows = ()


@dataclass(frozen=True, slots=True)
class CreatedReply:
    """``disk-precreate``: the images created."""

    created: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathsRequest:
    """``disk-remove``: images to remove."""

    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemovedReply:
    """``disk-remove``: the images removed."""

    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ShareProbeRequest:
    """``share-probe``: place (or remove) markers next to these paths."""

    token: str
    paths: tuple[str, ...] = ()
    remove: bool = False


@dataclass(frozen=True, slots=True)
class ShareProbeReply:
    """``share-probe``: path -> marker placed."""

    placed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkSinkRequest:
    """``link-sink``: where to listen, whom to answer, for how long."""

    bind_host: str
    allow_from: tuple[str, ...]
    token: str
    accept_timeout_s: float = 10.0
    max_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LinkSinkReply:
    """``link-sink``: what the sink received."""

    received_bytes: int = field(default=0, metadata=json_key("bytes"))
    seconds: float = 0.0
    mib_s: float | None = None
    refused: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkProbeRequest:
    """``link-probe``: stream to the sink at ``host:port`` for ``seconds``."""

    host: str
    port: int
    token: str
    seconds: float | None = None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class LinkProbeReply:
    """``link-probe``: what the sender sent (the sink's figures are the measurement)."""

    sent_bytes: int = field(default=0, metadata=json_key("sent"))


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """``link-route``: the destination's address as the source dials it."""

    host: str


@dataclass(frozen=True, slots=True)
class RouteReply:
    """``link-route``: the address this host sends from toward ``host``."""

    address: str = ""


@dataclass(frozen=True, slots=True)
class DomainRequest:
    """``guard-state``: one guest."""

    domain: str


@dataclass(frozen=True, slots=True)
class FreePrepareRequest:
    """``free-stuck-prepare``: the incoming guest, and how long its migration has waited."""

    domain: str
    younger_than_s: float


@dataclass(frozen=True, slots=True)
class FreePrepareReply:
    """What the destination did: the pid killed (0: none) and why."""

    killed_pid: int = 0
    exe: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class GuardStateReply:
    """``guard-state``: the guard's record ({} when none was kept)."""

    state: str = ""
    controller: str = ""


HELLO: Final = register(
    Operation("hello", Empty, HelloReply, "libvirt_vmotion.adapters.agent:hello")
)
BRIDGE_FACTS: Final = register(
    Operation(
        "bridge_facts",
        BridgesRequest,
        BridgeFactsReply,
        "libvirt_vmotion.cutover.bridge:op_bridge_facts",
    )
)
FDB_QUERY: Final = register(
    Operation("fdb_query", FdbRequest, FdbQueryReply, "libvirt_vmotion.cutover.bridge:op_fdb_query")
)
FDB_FLUSH: Final = register(
    Operation("fdb_flush", FdbRequest, FdbFlushReply, "libvirt_vmotion.cutover.bridge:op_fdb_flush")
)
ANNOUNCE: Final = register(
    Operation(
        "announce", AnnounceRequest, AnnounceReply, "libvirt_vmotion.cutover.announce:op_announce"
    )
)
HOST_FACTS: Final = register(
    Operation(
        "host-facts",
        HostFactsRequest,
        HostFactsReply,
        "libvirt_vmotion.reserve.hostops:op_host_facts",
    )
)
RESERVE: Final = register(
    Operation("reserve", ReserveRequest, ReserveReply, "libvirt_vmotion.reserve.hostops:op_reserve")
)
RELEASE: Final = register(
    Operation("release", ReleaseRequest, ReleaseReply, "libvirt_vmotion.reserve.hostops:op_release")
)
RESERVATIONS: Final = register(
    Operation(
        "reservations", Empty, ReservationsReply, "libvirt_vmotion.reserve.hostops:op_reservations"
    )
)
TLS_FACTS: Final = register(
    Operation("tls-facts", Empty, TlsFactsReply, "libvirt_vmotion.adapters.tlsfiles:op_tls_facts")
)
MAINTENANCE: Final = register(
    Operation(
        "maintenance",
        MaintenanceRequest,
        MaintenanceReply,
        "libvirt_vmotion.reserve.hostops:op_maintenance",
    )
)
GUEST_MEMORY: Final = register(
    Operation(
        "guest-memory",
        GuestMemoryRequest,
        GuestMemoryReply,
        "libvirt_vmotion.reserve.hostops:op_guest_memory",
    )
)
STORAGE_FACTS: Final = register(
    Operation(
        "storage-facts",
        StorageFactsRequest,
        StorageFactsReply,
        "libvirt_vmotion.storage.host:op_storage_facts",
    )
)
DISK_PRECREATE: Final = register(
    Operation(
        "disk-precreate",
        DisksRequest,
        CreatedReply,
        "libvirt_vmotion.storage.host:op_disk_precreate",
    )
)
DISK_REMOVE: Final = register(
    Operation(
        "disk-remove", PathsRequest, RemovedReply, "libvirt_vmotion.storage.host:op_disk_remove"
    )
)
SHARE_PROBE: Final = register(
    Operation(
        "share-probe",
        ShareProbeRequest,
        ShareProbeReply,
        "libvirt_vmotion.storage.host:op_share_probe",
    )
)
LINK_SINK: Final = register(
    Operation(
        "link-sink",
        LinkSinkRequest,
        LinkSinkReply,
        "libvirt_vmotion.adapters.linkprobe:op_link_sink",
    )
)
LINK_PROBE: Final = register(
    Operation(
        "link-probe",
        LinkProbeRequest,
        LinkProbeReply,
        "libvirt_vmotion.adapters.linkprobe:op_link_probe",
    )
)
GUARD_STATE: Final = register(
    Operation(
        "guard-state",
        DomainRequest,
        GuardStateReply,
        "libvirt_vmotion.converge.guard:op_guard_state",
    )
)
FREE_STUCK_PREPARE: Final = register(
    Operation(
        "free-stuck-prepare",
        FreePrepareRequest,
        FreePrepareReply,
        "libvirt_vmotion.converge.prepare:op_free_stuck_prepare",
    )
)
LINK_ROUTE: Final = register(
    Operation(
        "link-route", RouteRequest, RouteReply, "libvirt_vmotion.adapters.linkprobe:op_link_route"
    )
)

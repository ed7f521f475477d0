"""A Session's steps and its one undo stack, with plain fakes of our own Protocols."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.errors import (
    CutoverFailed,
    MigrationAborted,
    PreflightFailed,
    ReservationError,
    VmotionError,
)
from libvirt_vmotion.model import MeasuredContext, MigrationOutcome, MigrationRequest
from libvirt_vmotion.policy import MigrationPolicy
from libvirt_vmotion.preflight.result import Verdict, bad, ok
from libvirt_vmotion.reserve.store import Unreleased
from libvirt_vmotion.session.core import (
    RELEASE_AFTER_FAILURE_TIMEOUT_S,
    Claim,
    DiskToCreate,
    PreflightOutcome,
    Session,
    SessionResult,
    Step,
    Whereabouts,
    may_remove_precreated,
    measured_context,
)
from libvirt_vmotion.session.wiring import AgentDestination

REQUEST = MigrationRequest("web01", "qemu+tcp://a/system", "qemu+tcp://b/system")
CLAIM = Claim(domain="web01", memory_bytes=768 << 20, vcpus=1, dest_host="hostb")
DISK = DiskToCreate(path="/var/lib/libvirt/images/web01.qcow2", format="qcow2", capacity_bytes=1)
BACK_ON_SOURCE = Whereabouts(running_on_source=True, job_on_source=False, present_on_dest=False)
LANDED = Whereabouts(running_on_source=False, job_on_source=False, present_on_dest=True)


def passing(**changes: object) -> PreflightOutcome:
    fields: dict[str, object] = {
        "results": (ok("guest-running", "running"),),
        "claim": CLAIM,
        "host_pair": ("ua", "ub"),
    }
    fields.update(changes)
    return PreflightOutcome(**fields)  # type: ignore[arg-type]


@dataclass
class Journal:
    """What the fakes were asked, in order."""

    calls: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FakePreflight:
    outcome: PreflightOutcome
    journal: Journal

    def run(self) -> PreflightOutcome:
        self.journal.calls.append("preflight")
        return self.outcome


@dataclass
class FakeDestination:
    journal: Journal
    refuse: bool = False
    precreate_fails: bool = False
    release_timeouts: list[float | None] = field(default_factory=list)

    def reserve(self, reservation_id: str, claim: Claim) -> Mapping[str, object]:
        self.journal.calls.append(f"reserve {claim.memory_bytes >> 20} MiB")
        if self.refuse:
            msg = "hostb is full"
            raise ReservationError(msg, hint="free memory")
        return {"id": reservation_id}

    def release(
        self,
        reservation_id: str,
        reply: Mapping[str, object],
        *,
        host: str,
        timeout_s: float | None,
    ) -> Unreleased | None:
        self.journal.calls.append("release")
        self.release_timeouts.append(timeout_s)
        return None if timeout_s is None else Unreleased(reservation_id, host, "test", None)

    def precreate(self, disks: Sequence[DiskToCreate]) -> tuple[str, ...]:
        self.journal.calls.append("precreate")
        if self.precreate_fails:
            msg = "disk full"
            raise VmotionError(msg, hint="free space on hostb")
        return tuple(d.path for d in disks)

    def remove(self, paths: Sequence[str]) -> None:
        self.journal.calls.append("remove " + " ".join(paths))


@dataclass
class FakeLocator:
    where_now: Whereabouts
    journal: Journal

    def where(self, domain: str) -> Whereabouts:
        self.journal.calls.append("where")
        return self.where_now


@dataclass
class FakeMover:
    journal: Journal
    raises: BaseException | None = None
    policies: list[MigrationPolicy] = field(default_factory=list)
    measured: list[MeasuredContext] = field(default_factory=list)
    requests: list[MigrationRequest] = field(default_factory=list)

    def __call__(
        self,
        request: MigrationRequest,
        *,
        policy: MigrationPolicy,
        measured: MeasuredContext,
    ) -> tuple[MigrationOutcome, Mapping[str, Mapping[str, object]]]:
        self.journal.calls.append("migrate " + ",".join(request.copy_disks))
        self.requests.append(request)
        self.policies.append(policy)
        self.measured.append(measured)
        if self.raises is not None:
            raise self.raises
        outcome = MigrationOutcome(
            domain=request.domain,
            source_host="hosta",
            dest_host="hostb",
            wall_time_s=1.0,
            final=None,
            iterations=3,
        )
        return outcome, {}


@dataclass
class FakeEvents:
    journal: Journal

    def preflight_done(self, outcome: PreflightOutcome) -> None:
        self.journal.calls.append("shown")

    def warning(self, text: str) -> None:
        self.journal.warnings.append(text)


@dataclass
class FakeRunLog:
    journal: Journal

    def record(self, result: SessionResult, report: Mapping[str, object]) -> None:
        self.journal.calls.append("record")


def make_session(
    pre: PreflightOutcome | None = None,
    *,
    where: Whereabouts = BACK_ON_SOURCE,
    mover_raises: BaseException | None = None,
    refuse: bool = False,
    precreate_fails: bool = False,
    policy: MigrationPolicy | None = None,
) -> tuple[Session, Journal, FakeDestination, FakeMover]:
    journal = Journal()
    dest = FakeDestination(journal, refuse=refuse, precreate_fails=precreate_fails)
    mover = FakeMover(journal, raises=mover_raises)
    ticks = iter(range(100))
    session = Session(
        request=REQUEST,
        policy=policy or MigrationPolicy(),
        preflight=FakePreflight(pre or passing(), journal),
        destination=dest,
        locator=FakeLocator(where, journal),
        mover=mover,
        runlog=FakeRunLog(journal),
        clock=lambda: float(next(ticks)),
        new_id=lambda: "r1",
        events=FakeEvents(journal),
    )
    return session, journal, dest, mover


def test_the_steps_run_in_order_and_the_reservation_is_released_patiently() -> None:
    session, journal, dest, _ = make_session(passing(to_create=(DISK,), copy_disks=("vda",)))
    result = session.run()
    assert journal.calls == [
        "preflight",
        "shown",
        "reserve 768 MiB",
        "precreate",
        "migrate vda",
        "release",
    ]
    assert dest.release_timeouts == [None]  # success waits as long as the agent takes
    assert session.unreleased is None
    assert session.step is Step.DONE
    assert result.request.copy_disks == ("vda",)
    assert result.timeline.preflight_done_s <= result.timeline.migrate_done_s
    assert result.timeline.migrate_done_s <= result.timeline.released_s


def test_a_blocker_raises_before_anything_is_reserved() -> None:
    blocked = passing(results=(bad("dest-memory", Verdict.BLOCKER, "full", hint="free it"),))
    session, journal, _, _ = make_session(blocked)
    with pytest.raises(PreflightFailed) as caught:
        session.run()
    assert journal.calls == ["preflight"]
    assert "[dest-memory]" in caught.value.message
    assert caught.value.hint.startswith("free it")


def test_without_our_agent_nothing_is_reserved_or_created() -> None:
    session, journal, _, _ = make_session(passing(claim=None, to_create=(DISK,)))
    session.run()
    assert journal.calls == ["preflight", "shown", "migrate "]


def test_a_refused_reservation_changes_nothing_else() -> None:
    session, journal, _, _ = make_session(refuse=True)
    with pytest.raises(ReservationError):
        session.run()
    assert journal.calls == ["preflight", "shown", "reserve 768 MiB"]


def test_a_failed_precreate_releases_briefly_and_names_the_disk_step() -> None:
    session, journal, dest, _ = make_session(passing(to_create=(DISK,)), precreate_fails=True)
    with pytest.raises(PreflightFailed, match="pre-create"):
        session.run()
    assert journal.calls[-2:] == ["precreate", "release"]
    assert dest.release_timeouts == [RELEASE_AFTER_FAILURE_TIMEOUT_S]


@pytest.mark.parametrize(
    "error",
    [CutoverFailed("the guest is paused on b"), MigrationAborted("aborted"), KeyboardInterrupt()],
)
def test_a_failure_releases_with_a_short_deadline_and_keeps_what_it_left(
    error: BaseException,
) -> None:
    session, journal, dest, _ = make_session(mover_raises=error)
    with pytest.raises(type(error)):
        session.run()
    assert dest.release_timeouts == [RELEASE_AFTER_FAILURE_TIMEOUT_S]
    assert RELEASE_AFTER_FAILURE_TIMEOUT_S < 5  # below the agent's ssh ConnectTimeout
    assert session.unreleased == Unreleased("r1", "hostb", "test", None)
    assert any("Could not release reservation r1 on hostb" in w for w in journal.warnings)


def test_an_abort_with_the_guest_back_on_the_source_removes_our_images_then_releases() -> None:
    session, journal, _, _ = make_session(
        passing(to_create=(DISK,)), mover_raises=MigrationAborted("aborted")
    )
    with pytest.raises(MigrationAborted):
        session.run()
    assert journal.calls[-3:] == ["where", f"remove {DISK.path}", "release"]
    assert session.kept == ()


@pytest.mark.parametrize(
    "error",
    # Ctrl-C while the announcer joins, or any bug, after the guest switched over.
    [KeyboardInterrupt(), RuntimeError("a bug after switchover"), CutoverFailed("unclear")],
)
def test_a_failure_after_switchover_never_removes_the_disk_the_guest_now_uses(
    error: BaseException,
) -> None:
    session, journal, _, _ = make_session(
        passing(to_create=(DISK,)), where=LANDED, mover_raises=error
    )
    with pytest.raises(type(error)):
        session.run()
    assert not any(c.startswith("remove") for c in journal.calls)
    assert session.kept == (DISK.path,)
    assert any("Left the pre-created image" in w for w in journal.warnings)


@pytest.mark.parametrize(
    ("where", "removable"),
    [
        (BACK_ON_SOURCE, True),
        (LANDED, False),
        (Whereabouts(running_on_source=True, job_on_source=True, present_on_dest=False), False),
        (Whereabouts(running_on_source=True, job_on_source=False, present_on_dest=True), False),
        (Whereabouts(running_on_source=None, job_on_source=False, present_on_dest=False), False),
        (Whereabouts(running_on_source=True, job_on_source=None, present_on_dest=False), False),
        (Whereabouts(running_on_source=True, job_on_source=False, present_on_dest=None), False),
    ],
)
def test_images_are_removed_only_when_the_guest_is_verifiably_back_alone(
    where: Whereabouts, removable: bool
) -> None:
    assert may_remove_precreated(where) is removable


def test_check_runs_only_preflight() -> None:
    session, journal, _, _ = make_session()
    outcome = session.check()
    assert journal.calls == ["preflight"]
    assert not outcome.blocked


def test_remember_records_a_landed_run() -> None:
    session, journal, _, _ = make_session()
    result = session.run()
    session.remember(result, {})
    assert journal.calls[-1] == "record"


def test_measurements_go_beside_the_users_policy_decided_in_one_place() -> None:
    learned = passing(switchover_mib_s=300.0)
    assert measured_context(MigrationPolicy(), learned).switchover_mib_s == 300.0
    mine = MigrationPolicy(switchover_bandwidth_mib_s=120.0)
    assert measured_context(mine, learned).switchover_mib_s == 120.0  # the user's wins
    session, _, _, mover = make_session(learned)
    session.run()
    assert mover.measured[0].switchover_mib_s == 300.0
    assert mover.policies[0] == MigrationPolicy()  # the user's policy, untouched


# ---- the real Destination's release, against processes that stand for a host


REPLY: dict[str, object] = {"id": "r1", "expires_s": 1000.0, "longest_lease_s": 600.0}


def test_an_agent_that_does_not_answer_is_given_up_on_in_time() -> None:
    # Stands for ssh to a destination behind a cut link: no answer, ever.
    silent = RemoteHost(label="hostb", prefix=("sh", "-c", "exec sleep 30", "sh"), python="x")
    started_s = time.monotonic()
    left = AgentDestination(silent, warn=lambda _: None).release(
        "r1", REPLY, host="hostb", timeout_s=0.3
    )
    assert time.monotonic() - started_s < 5
    assert left is not None
    assert left.reason == "no answer within 0.3 s"
    assert left.ends_by_s is not None
    assert left.ends_by_s >= time.time() + 600 - 5  # the destination's longest lease from now
    assert left.message().startswith("Could not release reservation r1 on hostb: no answer")
    assert "at the latest" in left.message()


def test_an_agent_that_cannot_run_is_reported_with_its_error() -> None:
    broken = RemoteHost(label="hostb", prefix=("false",), python="x")
    left = AgentDestination(broken, warn=lambda _: None).release(
        "r1", {}, host="hostb", timeout_s=2.0
    )
    assert left is not None
    assert "Could not run libvirt-vmotion on hostb" in left.reason
    assert left.ends_by_s is None  # no lease terms in the reply: no time promised


@pytest.mark.parametrize("use_tls", [True, False])
def test_pre_flights_tls_decision_is_what_the_migration_is_asked_for(use_tls: bool) -> None:
    session, _, _, mover = make_session(passing(use_tls=use_tls))
    result = session.run()
    assert [r.tls for r in mover.requests] == [use_tls]
    assert result.request.tls is use_tls

"""The host-side reader of the guest's disk log agrees with the workload's format."""

from __future__ import annotations

import pytest

from libvirt_vmotion.lab.disklog import (
    MAGIC,
    RECORD_BYTES,
    build_record,
    check_log,
    record_problem,
)

RUN = 0x1234_5678_9ABC_DEF0


def test_record_layout() -> None:
    rec = build_record(RUN, 7)
    assert len(rec) == RECORD_BYTES
    assert int.from_bytes(rec[0:8], "little") == MAGIC
    assert int.from_bytes(rec[16:24], "little") == 7
    assert int.from_bytes(rec[-8:], "little") == 7
    assert record_problem(rec, run_id=RUN, seq=7) == ""


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda _r: bytes(RECORD_BYTES), "bad magic"),
        (lambda _r: build_record(RUN + 1, 3), "other run id"),
        (lambda _r: build_record(RUN, 2), "seq 2 instead of 3"),
        (lambda r: r[:-8] + (99).to_bytes(8, "little"), "tail seq differs"),
        (lambda r: r[:800] + bytes([r[800] ^ 1]) + r[801:], "checksum differs"),
    ],
)
def test_each_kind_of_damage_is_named(mutate: object, problem: str) -> None:
    rec = mutate(build_record(RUN, 3))  # type: ignore[operator]  # parametrized callable
    assert problem in record_problem(rec, run_id=RUN, seq=3)


def test_check_log_counts_lost_and_torn_records() -> None:
    image = bytearray(b"".join(build_record(RUN, s) for s in range(10)) + bytes(RECORD_BYTES * 6))
    assert check_log(bytes(image), run_id=RUN, acked=10).bad_count == 0
    image[4 * RECORD_BYTES : 5 * RECORD_BYTES] = bytes(RECORD_BYTES)  # a lost write
    image[6 * RECORD_BYTES + 100] ^= 0xFF  # a torn one
    result = check_log(bytes(image), run_id=RUN, acked=10)
    assert result.bad_count == 2
    assert [seq for seq, _ in result.bad] == [4, 6]
    with pytest.raises(ValueError, match="wrapped"):
        check_log(bytes(image), run_id=RUN, acked=17)

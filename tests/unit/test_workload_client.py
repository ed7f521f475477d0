import json

import pytest

from libvirt_vmotion.observe.workload import WorkloadCommandError, WorkloadStatus

# A status line exactly as the guest printed it (captured under TCG).
STATUS_LINE = (
    '{"boot_id": "408cc05a-d372-4145-a7b9-59bce8829966", "uptime_s": 8.51, '
    '"workload_uptime_s": 3.704, "wss_mib": 64, "rate_mib_s": 20, "mode": "paced", '
    '"achieved_mib_s": 20.14, "pages_written": 15517, "pages_verified": 33105, '
    '"verify_passes": 2, "mismatches": 0, "max_generation": 2, "last_verify_pass_s": 1.499}\n'
)


def test_parse_captured_status() -> None:
    status = WorkloadStatus.from_json(STATUS_LINE)
    assert status.boot_id == "408cc05a-d372-4145-a7b9-59bce8829966"
    assert status.wss_mib == 64
    assert status.rate_mib_s == 20
    assert status.mode == "paced"
    assert status.achieved_mib_s == pytest.approx(20.14)
    assert status.pages_verified == 33105
    assert status.mismatches == 0
    assert status.last_verify_pass_s == pytest.approx(1.499)


def test_parse_accepts_bytes_and_dicts_and_ignores_unknown_keys() -> None:
    obj = json.loads(STATUS_LINE)
    assert WorkloadStatus.from_json(STATUS_LINE.encode()) == WorkloadStatus.from_json(obj)
    assert WorkloadStatus.from_json({**obj, "new_field": 1}).mismatches == 0


def test_integral_float_fields_become_floats() -> None:
    status = WorkloadStatus.from_json({**json.loads(STATUS_LINE), "uptime_s": 9})
    assert isinstance(status.uptime_s, float)


def test_last_verify_pass_is_optional() -> None:
    obj = json.loads(STATUS_LINE)
    del obj["last_verify_pass_s"]
    assert WorkloadStatus.from_json(obj).last_verify_pass_s == 0.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"error": "mode must be paced or busy"}', "mode must be paced or busy"),
        ('{"boot_id": "x"}', "lacks"),
    ],
)
def test_bad_replies_raise(text: str, fragment: str) -> None:
    with pytest.raises(WorkloadCommandError, match=fragment):
        WorkloadStatus.from_json(text)


@pytest.mark.parametrize(
    ("key", "value"), [("wss_mib", 1.5), ("mode", 3), ("mismatches", True), ("uptime_s", "1")]
)
def test_wrong_types_raise(key: str, value: object) -> None:
    with pytest.raises(WorkloadCommandError, match=key):
        WorkloadStatus.from_json({**json.loads(STATUS_LINE), key: value})

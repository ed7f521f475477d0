from __future__ import annotations

import json

import pytest

from libvirt_vmotion.adapters.agent import AgentOperationFailed, RemoteHost, serve


@pytest.mark.parametrize(
    ("uri", "prefix_tail"),
    [
        ("qemu+ssh://admin@kvm2:2222/system", ("-p", "2222", "-l", "admin", "--", "kvm2")),
        ("qemu+ssh://kvm2/system", ("-l", "root", "--", "kvm2")),
        ("qemu+tcp://10.77.0.2/system", ("-l", "root", "--", "10.77.0.2")),
        ("qemu+tls://kvm3.example/system", ("-l", "root", "--", "kvm3.example")),
        ("qemu+ssh://[fd00::2]/system", ("-l", "root", "--", "fd00::2")),
    ],
)
def test_transport_follows_the_libvirt_uri(
    uri: str, prefix_tail: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMOTION_AGENT_SSH", raising=False)
    host = RemoteHost.for_uri(uri)
    assert host.prefix[0] == "ssh"
    assert host.prefix[-len(prefix_tail) :] == prefix_tail
    assert host.python == "python3"


def test_site_overrides_ssh_and_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMOTION_AGENT_SSH", "ssh -F /lab/ssh_config")
    monkeypatch.setenv("VMOTION_AGENT_PYTHON", "/opt/venv/bin/python")
    host = RemoteHost.for_uri("qemu+tcp://10.77.0.1/system")
    assert host.prefix == ("ssh", "-F", "/lab/ssh_config", "-l", "root", "--", "10.77.0.1")
    assert host.python == "/opt/venv/bin/python"


def test_local_uri_runs_the_agent_here() -> None:
    host = RemoteHost.for_uri("qemu:///system")
    assert host.prefix == ()
    assert host.call("hello")["version"]


def test_serve_turns_failures_into_replies() -> None:
    assert serve("hello", "{}")["ok"] is True
    unknown = serve("nope", "{}")
    assert unknown["ok"] is False
    assert "hello" in str(unknown["hint"])
    assert serve("hello", "[1]")["ok"] is False
    with pytest.raises(AgentOperationFailed):
        RemoteHost.for_uri("qemu:///system").call("nope")
    assert json.dumps(serve("hello", ""))


def test_serving_lines_answers_every_request_once_by_its_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from libvirt_vmotion.adapters.agent import serve_lines  # noqa: PLC0415

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # serve_lines sends stray output to stderr
    requests = io.StringIO(
        '{"id": 1, "op": "hello", "args": {}}\n'
        '{"id": 2, "op": "nosuch", "args": {}}\n'
        '{"id": 3, "op": "hello", "args": [1]}\n'
    )
    replies = io.StringIO()
    assert serve_lines(requests, replies) == 0
    got = {r["id"]: r for r in map(json.loads, replies.getvalue().splitlines())}
    assert sorted(got) == [1, 2, 3]
    assert got[1]["ok"] is True
    assert got[2]["ok"] is False
    assert "unknown agent operation" in got[2]["error"]
    assert got[3] == {
        "ok": False,
        "error": "agent arguments must be a JSON object",
        "hint": "",
        "id": 3,
    }

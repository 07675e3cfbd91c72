"""The hub's groups (moteseal/hub/groups.py) with real sessions: requests
through the group file, keys over each member's pairwise session, one
publish per group message, catch-up on a new session, state that survives
a restart without a key in the file, and the file's permissions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from device.errors import LocalError, RemoteError
from moteseal.hub.groups import (GROUP_REQUESTS_QUEUED_MAX, GroupFile, GroupFileError,
                                 GroupService, group_file_for, topic_for)
from moteseal.peer.listen import PeerListener
from tests.host.test_group_broadcast import Fleet

GID = "valves"


class RecordingLink:
    """The hub's link: what it publishes to the gateway, in order."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


class Hub:
    """A GroupService over real PeerSessions of ten CPython devices."""

    def __init__(self, tmp: Path, fleet: Fleet) -> None:
        self.fleet = fleet
        self.link = RecordingLink()
        self.reports: list[dict[str, Any]] = []
        self.published: list[tuple[str, bytes]] = []
        self.listener = PeerListener(fleet.peer, self.link, self.reports.append)
        self.file = GroupFile(tmp / "store.sqlite.groups")
        self.svc = GroupService(self.file, fleet.peer, self.listener,
                                lambda t, p: self.published.append((t, p)), self.reports.append)
        self.svc.restore()
        self.stop = threading.Event()
        self.svc.start(self.stop)

    def ask(self, op: str, arg: bytes = b"") -> dict[str, Any]:
        row = self.file.wait(self.file.request(op, GID, arg), 30)
        assert row is not None and row["state"] != "queued", row
        return row

    def deliver(self) -> None:
        """Hands what the hub sent to the devices (key messages)."""
        from device.envelope import decode

        for env in self.link.sent:
            d = bytes(decode(env).dst)
            self.fleet.pairwise(d, env)
        self.link.sent.clear()

    def close(self) -> None:
        self.stop.set()
        assert self.svc.thread is not None
        self.svc.thread.join(5)
        self.file.close()


@pytest.fixture
def fleet() -> Fleet:
    f = Fleet(10)
    for d in f.ids:
        r = f.peer.receive(f.sessions[d].handshake(b""))
        f.sessions[d].receive(r.reply)
        f.peer.receive(f.sessions[d].send(b"hello"))  # the device holds it: confirmed
    return f


def test_one_request_per_change_keys_over_sessions_one_publish_per_message(tmp_path, fleet) -> None:
    hub = Hub(tmp_path, fleet)
    try:
        row = hub.ask("create", json.dumps([d.decode() for d in fleet.ids]).encode())
        assert row["state"] == "done"
        assert json.loads(row["result"]) == {"epoch": 0, "members": 10, "keys_sent": 10,
                                             "keys_pending": 0}
        hub.deliver()
        row = hub.ask("send", b"valve=closed")
        assert json.loads(row["result"])["bytes"] == len(hub.published[0][1])
        (topic, msg), = hub.published
        assert topic == topic_for(GID) == "moteseal/v1/group/valves"
        assert fleet.receive_all(msg) == {d: b"valve=closed" for d in fleet.ids}
        assert hub.ask("remove", b"dev-03")["state"] == "done"
        hub.deliver()
        assert hub.file.state() == {GID: {"epoch": 1, "members": [d.decode() for d in fleet.ids
                                                                 if d != b"dev-03"]}}
        hub.ask("send", b"after")
        got = fleet.receive_all(hub.published[-1][1])
        assert got.pop(b"dev-03") != b"after" and set(got.values()) == {b"after"}
    finally:
        hub.close()


def test_a_bad_request_fails_with_its_reason_and_the_hub_goes_on(tmp_path, fleet) -> None:
    hub = Hub(tmp_path, fleet)
    try:
        row = hub.ask("add", b"dev-01")
        assert row["state"] == "failed" and "no group" in row["result"]
        assert hub.ask("create", b"not json")["state"] == "failed"
        assert hub.ask("create", b'["bad/id"]')["state"] == "failed"
        assert hub.ask("create", b'["dev-01"]')["state"] == "done"  # still running
        with pytest.raises(LocalError):
            hub.file.request("send", GID, bytes(257))
        with pytest.raises(LocalError):
            hub.file.request("drop", GID)
        assert hub.svc.counts["group_requests_failed"] == 3
    finally:
        hub.close()


def test_requests_are_bounded_while_no_hub_runs(tmp_path) -> None:
    gf = GroupFile(tmp_path / "g")
    try:
        for _ in range(GROUP_REQUESTS_QUEUED_MAX):
            gf.request("rotate", GID)
        with pytest.raises(LocalError, match="is it running"):
            gf.request("rotate", GID)
    finally:
        gf.close()


def test_a_member_that_handshakes_again_gets_the_current_keys_on_its_new_session(
        tmp_path, fleet) -> None:
    hub = Hub(tmp_path, fleet)
    try:
        hub.ask("create", json.dumps([d.decode() for d in fleet.ids]).encode())
        hub.deliver()
        hub.ask("rotate")  # dev-09 is off: its keys go to a session it has lost
        hub.link.sent = [e for e in hub.link.sent if b"dev-09" not in e]
        hub.deliver()
        fleet.boot(b"dev-09")  # reboot: no group state, a new session
        r = fleet.peer.receive(fleet.sessions[b"dev-09"].handshake(b""))
        fleet.sessions[b"dev-09"].receive(r.reply)
        # Until it confirms the new session the hub sends on the old one,
        # which the device cannot read: that is not counted as delivered.
        hub.svc.seen("dev-09")
        assert _until(lambda: hub.link.sent)
        new_sid = fleet.peer.sessions(b"dev-09")[0][0]
        assert hub.svc._keyed.get(b"dev-09") != new_sid
        with pytest.raises(RemoteError):
            fleet.sessions[b"dev-09"].receive(hub.link.sent[0])
        hub.link.sent.clear()
        # Its first data envelope confirms the new session: keys go there.
        hub.listener.handle(fleet.sessions[b"dev-09"].send(b"\x01hello"))
        hub.svc.seen("dev-09")
        assert _until(lambda: hub.link.sent and hub.svc._keyed.get(b"dev-09") == new_sid)
        hub.deliver()
        assert fleet.groups[b"dev-09"].member(GID.encode()).epoch == 1
        hub.ask("send", b"awake")
        assert fleet.receive(b"dev-09", hub.published[-1][1]) == b"awake"
        assert any(r["event"] == "group_catch_up" for r in hub.reports)
    finally:
        hub.close()


def _until(pred, timeout: float = 10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_a_restarted_hub_restores_groups_in_a_new_epoch_and_stores_no_key(tmp_path, fleet) -> None:
    hub = Hub(tmp_path, fleet)
    hub.ask("create", json.dumps([d.decode() for d in fleet.ids]).encode())
    keys = [hub.svc.hub._groups[GID.encode()].key, *hub.svc.hub._groups[GID.encode()].mac_keys]
    hub.close()
    hub = Hub(tmp_path, fleet)  # the restart
    try:
        g = hub.svc.hub._groups[GID.encode()]
        assert hub.svc.hub.epoch(GID.encode()) == 1 and hub.file.state()[GID]["epoch"] == 1
        keys += [g.key, *g.mac_keys]
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite.groups*"))
        assert stored and not any(k in stored for k in keys)
        # Nobody has a session with the restarted hub yet: keys go at the
        # next handshake (here: the sessions this process still holds).
        for d in fleet.ids:
            hub.svc.seen(d.decode())
        assert _until(lambda: len(hub.svc._keyed) == 10)
        hub.deliver()
        hub.ask("send", b"x")
        assert set(fleet.receive_all(hub.published[-1][1]).values()) == {b"x"}
    finally:
        hub.close()


def test_a_group_file_open_to_others_is_refused(tmp_path) -> None:
    path = tmp_path / "store.sqlite.groups"
    GroupFile(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(GroupFileError) as e:
        GroupFile(path)
    assert e.value.exit_code == 3
    # The CLI says so in one line, exit 3.
    (tmp_path / "hub.toml").write_text('[hub]\nregistry = "r.sqlite"\nstore = "store.sqlite"\n')
    r = subprocess.run([sys.executable, "-m", "moteseal.cli.main", "group", "list", "--config",
                        str(tmp_path / "hub.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "chmod 600" in r.stderr and "Traceback" not in r.stderr
    assert group_file_for(tmp_path / "store.sqlite") == path


def test_cli_group_requests_wait_for_the_hub_and_send_takes_no_device(tmp_path) -> None:
    (tmp_path / "hub.toml").write_text('[hub]\nregistry = "r.sqlite"\nstore = "store.sqlite"\n')

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moteseal.cli.main", *args, "--config",
                               str(tmp_path / "hub.toml")], capture_output=True, text=True,
                              timeout=60)

    r = cli("group", "create", GID, "dev-1", "--wait", "0.3")
    assert r.returncode == 1 and "is the hub running?" in r.stdout
    r = cli("send", "--group", GID, "dev-1", "close")
    assert r.returncode == 2 and "exactly one COMMAND" in r.stderr
    r = cli("send", "--group", GID, "x" * 300, "--wait", "0.1")
    assert r.returncode == 1 and "1..256 bytes" in r.stderr
    assert json.loads(cli("group", "list", "--json").stdout) == {}


def test_finished_requests_are_dropped_after_a_day(tmp_path) -> None:
    now = [1000.0]
    gf = GroupFile(tmp_path / "g", clock=lambda: now[0])
    try:
        old = gf.request("rotate", GID)
        gf.finish(old, True, "{}")
        now[0] += 86400.0 + 1
        waiting = gf.request("rotate", GID)
        new = gf.request("rotate", GID)
        gf.finish(new, False, "LocalError: no group")
        assert gf.result(old) is None
        assert gf.result(new)["state"] == "failed"
        assert [r[0] for r in gf.queued()] == [waiting]  # a queued one is never dropped
    finally:
        gf.close()


def test_a_publish_that_fails_fails_its_request_and_the_thread_goes_on(tmp_path, fleet) -> None:
    hub = Hub(tmp_path, fleet)
    try:
        hub.ask("create", b'["dev-01"]')

        def broken(topic: str, payload: bytes) -> None:
            raise RuntimeError("the MQTT client is gone")

        hub.svc.publish = broken
        row = hub.ask("send", b"x")
        assert row["state"] == "failed" and row["result"] == "RuntimeError"
        hub.svc.publish = lambda t, p: hub.published.append((t, p))
        assert hub.ask("send", b"y")["state"] == "done" and len(hub.published) == 1
    finally:
        hub.close()

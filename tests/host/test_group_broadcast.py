"""Group broadcast (device/group.py, moteseal/peer/group.py) with ten CPython
devices, each with a real pairwise Noise session to the hub, in memory:
one group message for all, removal, forgery by a member, replay, a
sleeping member catching up, a hub restart."""

from __future__ import annotations

import random

import pytest

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError, DecodeError, RemoteError, ReplayError
from device.group import (GROUP_HEAD, MAC_BYTES, TAG_BYTES, Groups, encode_group_header_into)
from device import envelope as E
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import EV_DATA, EV_HANDSHAKE, DeviceSession
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.peer.group import GroupHub, distribute

GID = b"valves"


class Fleet:
    """A hub (PeerSessions + GroupHub) and devices with pairwise sessions."""

    def __init__(self, n: int = 10) -> None:
        self.backend = NaclBackend()
        self.static = self.backend.generate_keypair()
        self.directory = NonpersistingDirectory([self.static])
        self.peer = PeerSessions(self.backend, b"hub", self.directory)
        self.hub = GroupHub(self.backend, b"hub")
        self.ids = [b"dev-%02d" % i for i in range(n)]
        self.sessions: dict[bytes, DeviceSession] = {}
        self.groups: dict[bytes, Groups] = {}
        for d in self.ids:
            self.directory.add(d, self.backend.random_bytes(32))
            self.boot(d)

    def boot(self, d: bytes) -> None:
        """A device powering up: a new session object and empty group state."""
        self.sessions[d] = DeviceSession(self.backend, d, b"hub", self.static[1],
                                         self.directory.psk_for(d),
                                         Msg1Counter(NonpersistingCounterStore()))
        self.sessions[d]._counter.skip_past(self.directory.counter_get(d))
        self.groups[d] = Groups(self.backend, b"hub")

    def handshake(self, d: bytes) -> None:
        r = self.peer.receive(self.sessions[d].handshake(b""))
        assert self.sessions[d].receive(r.reply)[0] == EV_HANDSHAKE
        for msg in self.hub.catch_up(d):  # Rule 3: a waking member gets its keys
            self.pairwise(d, self.peer.send(d, msg))

    def pairwise(self, d: bytes, env: bytes) -> None:
        ev, pt = self.sessions[d].receive(env)
        assert ev == EV_DATA
        assert self.groups[d].take(pt, len(pt)) is True

    def distribute(self, msgs: dict[bytes, bytes], asleep=()) -> None:
        sent, pending = distribute(self.peer, {d: m for d, m in msgs.items() if d not in asleep})
        assert pending == []
        for d, env in sent.items():
            self.pairwise(d, env)

    def receive(self, d: bytes, msg: bytes):
        out = bytearray(300)
        try:
            n = self.groups[d].receive_into(msg, len(msg), out)
        except RemoteError as e:
            return type(e).__name__
        return bytes(out[:n])

    def receive_all(self, msg: bytes) -> dict[bytes, object]:
        return {d: self.receive(d, msg) for d in self.ids}


@pytest.fixture
def fleet() -> Fleet:
    f = Fleet()
    for d in f.ids:
        f.handshake(d)
    f.distribute(f.hub.create(GID, f.ids))
    return f


def test_one_group_message_reaches_all_ten_members(fleet: Fleet) -> None:
    msg = fleet.hub.seal(GID, b"valve=closed")
    assert fleet.receive_all(msg) == {d: b"valve=closed" for d in fleet.ids}
    # Cost: the ciphertext once, MAC_BYTES per member.
    header = 1 + 1 + (1 + 3) + (1 + 6) + 1 + 1 + 2  # array, head, src, gid, epoch, ctr, ct head
    assert len(msg) == header + 12 + TAG_BYTES + 2 + MAC_BYTES * 10 == 127
    assert msg[1] == GROUP_HEAD
    with pytest.raises(DecodeError, match="unknown envelope version"):
        fleet.sessions[b"dev-00"].receive(msg)  # never mistaken for an envelope


def test_a_removed_member_reads_nothing_afterwards(fleet: Fleet) -> None:
    gone = b"dev-03"
    old_cipher = fleet.groups[gone].member(GID).cipher
    msgs = fleet.hub.remove(GID, gone)
    assert set(msgs) == set(fleet.ids)
    # A hostile removed device ignores its leave message and keeps its keys.
    fleet.distribute({d: m for d, m in msgs.items() if d != gone})
    after = fleet.hub.seal(GID, b"new secret")
    got = fleet.receive_all(after)
    assert got[gone] == "DecodeError"  # epoch ahead: and catching up is refused it
    assert all(got[d] == b"new secret" for d in fleet.ids if d != gone)
    assert fleet.hub.catch_up(gone) == []
    # Its old group key does not open the new epoch's ciphertext either.
    env = fleet.groups[gone]._env.decode_group_into(after, len(after), 10_000, 256, 512)
    with pytest.raises(AuthError):
        old_cipher.decrypt_into(env.ctr, after, env.ct_off, after, env.ct_off, env.ct_len,
                                bytearray(64), 0)
    # Obeying the leave message instead clears the slot.
    fleet.pairwise(gone, fleet.peer.send(gone, msgs[gone]))
    assert fleet.groups[gone].member(GID) is None
    assert fleet.receive(gone, fleet.hub.seal(GID, b"more")) == "DecodeError"


def forge(fleet: Fleet, forger: bytes, payload: bytes, macs: bytes | None = None) -> bytes:
    """A group message made by a member from what it holds: the group key
    and its own MAC key (read from its own state), under the next counter."""
    m = fleet.groups[forger].member(GID)
    ctr = m.window.hi + 1
    ct_len = len(payload) + TAG_BYTES
    count = len(fleet.hub.members(GID)) if macs is None else len(macs) // MAC_BYTES
    buf = bytearray(60 + ct_len + 3 + MAC_BYTES * count)
    off = encode_group_header_into(buf, b"hub", GID, m.epoch, ctr, ct_len)
    body = off + m.cipher.encrypt_into(ctr, buf, off, payload, 0, len(payload), buf, off)
    at = E.put_head(buf, body, 2, MAC_BYTES * count)
    tag = bytearray(16)
    m.mac.encrypt_into(ctr, buf, body, tag, 0, 0, tag, 0)
    own = bytes(tag[:MAC_BYTES])
    if macs is None:
        macs = own * count  # its own MAC in every slot: the best it can compute
    buf[at:at + len(macs)] = macs
    return bytes(buf[:at + len(macs)])


def test_a_members_forged_group_message_is_refused_by_the_others(fleet: Fleet) -> None:
    forger = b"dev-07"
    forged = forge(fleet, forger, b"valve=open")
    got = fleet.receive_all(forged)
    assert got[forger] == b"valve=open"  # it can fool only itself
    assert all(got[d] == "AuthError" for d in fleet.ids if d != forger)
    # Nor with random MACs, nor with the MAC list of a genuine message.
    genuine = fleet.hub.seal(GID, b"valve=closed")
    env = fleet.groups[b"dev-00"]._env.decode_group_into(genuine, len(genuine), 10_000, 256, 512)
    real_macs = genuine[env.macs_off:]
    for macs in (random.Random(1).randbytes(MAC_BYTES * 10), real_macs):
        got = fleet.receive_all(forge(fleet, forger, b"valve=open", macs))
        assert all(got[d] == "AuthError" for d in fleet.ids if d != forger)
    # The refused forgeries moved no window: the genuine message still arrives
    # (except at the forger, which spent that counter on its own forgery).
    got = fleet.receive_all(genuine)
    assert all(got[d] == b"valve=closed" for d in fleet.ids if d != forger)


def test_a_replayed_group_message_is_refused(fleet: Fleet) -> None:
    first = fleet.hub.seal(GID, b"cmd 1")
    second = fleet.hub.seal(GID, b"cmd 2")
    assert set(fleet.receive_all(second).values()) == {b"cmd 2"}
    assert set(fleet.receive_all(first).values()) == {b"cmd 1"}  # reordered: still fresh
    assert set(fleet.receive_all(first).values()) == {"ReplayError"}
    assert set(fleet.receive_all(second).values()) == {"ReplayError"}
    fleet.distribute(fleet.hub.rotate(GID))
    assert set(fleet.receive_all(fleet.hub.seal(GID, b"cmd 3")).values()) == {b"cmd 3"}
    assert set(fleet.receive_all(second).values()) == {"ReplayError"}  # an older epoch


def test_a_sleeping_member_catches_up_when_it_wakes(fleet: Fleet) -> None:
    sleeper = b"dev-09"
    fleet.distribute(fleet.hub.remove(GID, b"dev-01"), asleep={sleeper, b"dev-01"})
    missed = fleet.hub.seal(GID, b"while asleep")
    assert fleet.receive(sleeper, missed) == "DecodeError"  # an epoch it lacks
    # It wakes after a reboot (no group state), handshakes, and catches up.
    fleet.boot(sleeper)
    fleet.handshake(sleeper)
    assert fleet.groups[sleeper].member(GID).epoch == fleet.hub.epoch(GID)
    now = fleet.hub.seal(GID, b"after waking")
    assert fleet.receive(sleeper, now) == b"after waking"
    # What was sent before its keys came is below the floor: no replay to a
    # member that lost its window.
    assert fleet.receive(sleeper, missed) == "ReplayError"
    # A re-sent key of the epoch it holds changes nothing (its window stays).
    for msg in fleet.hub.catch_up(sleeper):
        assert fleet.groups[sleeper].take(msg, len(msg)) is True
    assert fleet.receive(sleeper, now) == "ReplayError"


def test_older_key_messages_cannot_roll_a_member_back(fleet: Fleet) -> None:
    old = fleet.hub.catch_up(b"dev-00")[0]
    fleet.distribute(fleet.hub.rotate(GID))
    with pytest.raises(ReplayError):
        fleet.groups[b"dev-00"].take(old, len(old))
    with pytest.raises(DecodeError):
        fleet.groups[b"dev-00"].take(old[:-1], len(old) - 1)
    assert fleet.groups[b"dev-00"].take(b"\x01reading", 8) is False  # not a key message


def test_a_restarted_hub_starts_a_new_epoch_and_members_follow(fleet: Fleet) -> None:
    state = fleet.hub.state()
    assert "key" not in repr(state) and state["valves"]["epoch"] == 0
    fleet.hub = GroupHub(fleet.backend, b"hub")
    for d, msgs in fleet.hub.restore(state).items():
        for m in msgs:
            fleet.pairwise(d, fleet.peer.send(d, m))
    assert fleet.hub.epoch(GID) == 1
    assert set(fleet.receive_all(fleet.hub.seal(GID, b"x")).values()) == {b"x"}


def test_an_altered_group_message_is_refused_and_truncations_raise_only_remote_errors(
        fleet: Fleet) -> None:
    msg = fleet.hub.seal(GID, b"valve=closed")
    g = fleet.groups[b"dev-05"]
    out = bytearray(300)
    rng = random.Random(7)
    for _ in range(300):
        b = bytearray(msg)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            n = g.receive_into(b, len(b), out)
        except RemoteError:
            continue
        # A flip inside another member's MAC is the only change we accept.
        env = g._env
        assert env.macs_off <= [i for i in range(len(b)) if b[i] != msg[i]][0]
        assert bytes(out[:n]) == b"valve=closed"
        g = Groups(fleet.backend, b"hub")  # fresh window for the next try
        for m in fleet.hub.catch_up(b"dev-05"):
            g.take(m, len(m))
        g.member(GID).window.hi = -1
    for k in range(len(msg)):
        with pytest.raises(RemoteError):
            g.receive_into(msg, k, out)

"""Group broadcast, the hub's side: group keys in epochs, distributed over
each member's pairwise session, and one sealed message per broadcast
(docs/protocol.md, "Group broadcast"; the member's side and the wire
format are ``device/group.py``).

Invariants:
- Rule 1: every change of membership starts a new epoch with a fresh
  random group key and fresh per-member MAC keys: a removed member holds
  no key of the new epoch, so it reads nothing sent afterwards; an added
  member holds none of the old, so it reads nothing sent before.
- Rule 2: no (epoch, counter) is used twice. Keys and counters live in
  memory only; ``GroupHub.restore`` (after a restart) starts every group
  in a new epoch, so no key material is ever stored and no nonce can be
  reused with a lost counter. What is stored (``state()``) is group ids,
  epoch numbers and member ids.
- Rule 3: a key message goes only into the member's pairwise session
  (``PeerSessions.send``); ``catch_up`` gives a waking member (one that
  handshakes) its current keys with ``floor`` = the next counter, so it
  reads what is sent from then on and nothing older can be replayed to it
  (``device/group.py`` Rule 2).
- Rule 4: a member's MAC slot (``index``) is its position in the epoch's
  member list; the MAC list of a group message has exactly one MAC per
  member, in that order.

Threads: one caller at a time (the hub serialises commands).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from device import envelope as E
from device.bundle import is_id
from device.errors import LocalError
from device.group import (CTR_MAX, EPOCH_MAX, GROUP_HEADER_MAX_BYTES, GROUP_MAX_MEMBERS,
                          GROUP_MAX_PAYLOAD_BYTES, KEY_BYTES, KEY_MSG, LEAVE_MSG, MAC_BYTES,
                          TAG_BYTES, encode_group_header_into)


@dataclass
class _Group:
    gid: bytes
    epoch: int
    members: list[bytes]
    key: bytes = b""
    mac_keys: list[bytes] = field(default_factory=list)
    ctr: int = 0


def key_message(gid: bytes, epoch: int, floor: int, index: int, key: bytes,
                mac_key: bytes) -> bytes:
    """``0x07 | gid_len | gid | epoch u32 | floor u32 | index u16 | key | MAC key``."""
    return bytes([KEY_MSG, len(gid)]) + gid + struct.pack(">IIH", epoch, floor, index) \
        + key + mac_key


def leave_message(gid: bytes, epoch: int) -> bytes:
    """``0x08 | gid_len | gid | epoch u32``: the member's keys are void."""
    return bytes([LEAVE_MSG, len(gid)]) + gid + struct.pack(">I", epoch)


class GroupHub:
    """Groups of devices and their epochs, for one hub id.

    Membership changes return ``{device_id: key message}``: plaintexts to
    send each device through its pairwise session (``distribute``)."""

    def __init__(self, backend, hub_id: bytes) -> None:
        self._backend = backend
        self.hub_id = bytes(hub_id)
        self._groups: dict[bytes, _Group] = {}

    def groups(self) -> list[bytes]:
        return sorted(self._groups)

    def members(self, gid: bytes) -> list[bytes]:
        return list(self._group(gid).members)

    def epoch(self, gid: bytes) -> int:
        return self._group(gid).epoch

    def _group(self, gid: bytes) -> _Group:
        try:
            return self._groups[bytes(gid)]
        except KeyError:
            raise LocalError(f"no group {gid!r}") from None

    def create(self, gid: bytes, members, epoch: int = 0) -> dict[bytes, bytes]:
        """A new group. Raises ``LocalError`` (bad id, exists, too many
        members)."""
        gid = bytes(gid)
        if not is_id(gid):
            raise LocalError("group ids are 1..16 of [A-Za-z0-9._-]")
        if gid in self._groups:
            raise LocalError(f"group {gid!r} exists")
        self._groups[gid] = _Group(gid, epoch - 1, [])
        try:
            return self._rotate(self._groups[gid], [bytes(m) for m in members])
        except LocalError:
            del self._groups[gid]
            raise

    def add(self, gid: bytes, device_id: bytes) -> dict[bytes, bytes]:
        """Adds a member; a new epoch for everyone (Rule 1)."""
        g = self._group(gid)
        if bytes(device_id) in g.members:
            return {}
        return self._rotate(g, g.members + [bytes(device_id)])

    def remove(self, gid: bytes, device_id: bytes) -> dict[bytes, bytes]:
        """Removes a member; a new epoch for the others (Rule 1). The
        removed device gets a leave message (a courtesy: its old keys are
        useless anyway)."""
        g = self._group(gid)
        dev = bytes(device_id)
        if dev not in g.members:
            return {}
        old = g.epoch
        out = self._rotate(g, [m for m in g.members if m != dev])
        out[dev] = leave_message(g.gid, old)
        return out

    def rotate(self, gid: bytes) -> dict[bytes, bytes]:
        """A new epoch with the same members (e.g. periodically, or when
        the counter is spent)."""
        g = self._group(gid)
        return self._rotate(g, list(g.members))

    def _rotate(self, g: _Group, members: list[bytes]) -> dict[bytes, bytes]:
        if not members or len(members) > GROUP_MAX_MEMBERS or len(set(members)) != len(members):
            raise LocalError(f"a group has 1..{GROUP_MAX_MEMBERS} distinct members")
        for m in members:
            if not is_id(m):
                raise LocalError(f"bad device id {m!r}")
        if g.epoch + 1 > EPOCH_MAX:
            raise LocalError("group epochs exhausted; create a new group id")
        rnd = self._backend.random_bytes
        g.epoch += 1
        g.members = members
        g.key = rnd(KEY_BYTES)
        g.mac_keys = [rnd(KEY_BYTES) for _ in members]
        g.ctr = 0
        return {m: key_message(g.gid, g.epoch, 0, i, g.key, g.mac_keys[i])
                for i, m in enumerate(members)}

    def catch_up(self, device_id: bytes) -> list[bytes]:
        """Key messages for every group ``device_id`` belongs to, at the
        current epoch with ``floor`` = the next counter (Rule 3): call when
        the device handshakes (``Received.kind == "hs1"``)."""
        dev = bytes(device_id)
        out = []
        for g in self._groups.values():
            if dev in g.members:
                i = g.members.index(dev)
                out.append(key_message(g.gid, g.epoch, g.ctr, i, g.key, g.mac_keys[i]))
        return out

    def seal(self, gid: bytes, payload: bytes) -> bytes:
        """One group message carrying ``payload`` for every member. Raises
        ``LocalError`` (no such group), ``MessageTooLarge`` (over
        ``GROUP_MAX_PAYLOAD_BYTES``), ``SessionExpired`` when the epoch's
        counter is spent (``rotate`` first)."""
        from device.errors import MessageTooLarge, SessionExpired

        g = self._group(gid)
        if len(payload) > GROUP_MAX_PAYLOAD_BYTES:
            raise MessageTooLarge(f"group payloads are at most {GROUP_MAX_PAYLOAD_BYTES} bytes")
        if g.ctr > CTR_MAX:
            raise SessionExpired("group epoch spent; rotate")
        ctr = g.ctr
        ct_len = len(payload) + TAG_BYTES
        macs_len = MAC_BYTES * len(g.members)
        buf = bytearray(GROUP_HEADER_MAX_BYTES + ct_len + 3 + macs_len)
        off = encode_group_header_into(buf, self.hub_id, g.gid, g.epoch, ctr, ct_len)
        body = off + self._backend.cipher(g.key).encrypt_into(
            ctr, buf, off, payload, 0, len(payload), buf, off)
        at = E.put_head(buf, body, 2, macs_len)
        tag = bytearray(TAG_BYTES)
        for k in g.mac_keys:  # Rule 4: one MAC per member, in member order
            self._backend.cipher(k).encrypt_into(ctr, buf, body, tag, 0, 0, tag, 0)
            buf[at:at + MAC_BYTES] = tag[:MAC_BYTES]
            at += MAC_BYTES
        g.ctr = ctr + 1  # Rule 2: never again under this epoch
        return bytes(buf[:at])

    def state(self) -> dict:
        """What to persist: ids, epochs and members; no keys (Rule 2)."""
        return {g.gid.decode(): {"epoch": g.epoch, "members": [m.decode() for m in g.members]}
                for g in self._groups.values()}

    def restore(self, state: dict) -> dict[bytes, list[bytes]]:
        """Loads ``state()`` after a restart: every group starts a new
        epoch (Rule 2). Returns ``{device_id: [key messages]}``."""
        out: dict[bytes, list[bytes]] = {}
        for gid, s in state.items():
            self._groups.pop(gid.encode(), None)
            msgs = self.create(gid.encode(), [m.encode() for m in s["members"]], s["epoch"] + 1)
            for dev, msg in msgs.items():
                out.setdefault(dev, []).append(msg)
        return out


def distribute(peer, messages: dict[bytes, bytes], now=None) -> tuple[dict[bytes, bytes], list[bytes]]:
    """Seals each key message in its device's pairwise session
    (``PeerSessions.send``). Returns ``({device_id: envelope}, [device ids
    without a session])``: those get their keys from ``catch_up`` when they
    next handshake."""
    sent, pending = {}, []
    for dev, msg in messages.items():
        try:
            sent[dev] = peer.send(dev, msg, now)
        except LocalError:
            pending.append(dev)
    return sent, pending

"""Group broadcast, the member's side: one ciphertext for a group of devices
(docs/protocol.md, "Group broadcast"; the hub's side is
``moteseal/peer/group.py``).

A group message is sealed once under the group's epoch key (ChaCha20-
Poly1305, so every member can read it) and carries one short MAC per
member, each under a key only that member and the hub hold. The group key
alone would let any member forge messages the others accept; a member's
MAC key speaks only to that member, so a member cannot forge a message
another member accepts as the hub's. Both keys arrive in the member's
pairwise Noise session (a key message), fresh for every epoch.

The per-member MAC is the Poly1305 tag of ChaCha20-Poly1305 under the
member's key with nonce ``ctr``, the group message up to the end of its
ciphertext as associated data and an empty plaintext, cut to
``MAC_BYTES``: the same allocation-free AEAD the sessions use, so a board
needs no other primitive (MicroPython here has no Ed25519, and a signature
check would not fit the heap budget). Cost: ``MAC_BYTES`` (8) per member in
every group message, and one Poly1305 over the message per member on the
hub; a member checks one MAC and one AEAD tag.

Invariants:
- Rule 1: keys come only from ``take`` with a plaintext the caller got
  from its pairwise session with the hub (``EV_DATA``), so only the hub can
  install them. Epochs only move forward: a key message of an older epoch
  raises ``ReplayError``; one of the current epoch (a catch-up re-send)
  changes nothing.
- Rule 2: a new epoch resets the counter window to the key message's
  ``floor``: a member that lost its state (a reboot) accepts no group
  message sent before the hub re-sent it the key, so none can be replayed
  to it.
- Rule 3: a group message is accepted only if it decodes within the
  limits, comes from our hub, names a group we hold, is of our epoch, its
  counter is fresh in the window, our MAC verifies and the AEAD tag
  verifies, in that order. Any failure raises a ``RemoteError``
  (``AuthError`` for both tags, coarse) and changes nothing; the window
  commits only after both tags verified.
- Rule 4: ``Groups.receive_into`` allocates nothing on MicroPython once
  the keys are installed (tests/micropython/test_mp_group.py runs it under
  ``heap_lock``).
- Rule 5: the hub never seals two messages under one (epoch, counter):
  its counter is in memory only, and a hub that restarts starts a new
  epoch with fresh keys (``moteseal/peer/group.py`` Rule 2).
"""

from device import envelope as E
from device.errors import AuthError, BufferTooSmall, DecodeError, LocalError, ReplayError
from device.replay import DEFAULT_WINDOW, ReplayWindow

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

GROUP_HEAD = const(8)  # outside the envelope heads 4..7: an envelope decoder refuses it
GROUP_ARRAY = const(0x87)  # array(7)
MAC_BYTES = const(8)  # per member; a forgery passes with probability 2^-64 per try
KEY_BYTES = const(32)
TAG_BYTES = const(16)
EPOCH_MAX = const(0x3FFFFFFF)  # small ints on 32-bit ports, like every counter on the path
CTR_MAX = const(0x3FFFFFFE)
GROUP_MAX_MEMBERS = const(512)  # members a group message can address (its MAC list)
GROUP_MAX_PAYLOAD_BYTES = const(256)  # commands are short; bounds a member's buffer
# array + head + src (1 + 16) + gid (1 + 16) + epoch (5) + ctr (5) + ct bstr head (3)
GROUP_HEADER_MAX_BYTES = const(1 + 1 + 17 + 17 + 5 + 5 + 3)
# The largest group message: header, payload, tag, the MAC list's head and MACs.
GROUP_MAX_BYTES = const(49 + 256 + 16 + 3 + 512 * 8)

# Key messages, inside the pairwise session's plaintext (docs/protocol.md):
# 0x07 | gid_len u8 | gid | epoch u32 | floor u32 | index u16 | group key | MAC key
# 0x08 | gid_len u8 | gid | epoch u32                 (you left the group)
KEY_MSG = const(0x07)
LEAVE_MSG = const(0x08)
KEY_MSG_FIXED_BYTES = const(1 + 1 + 4 + 4 + 2 + 32 + 32)  # plus the gid
LEAVE_MSG_FIXED_BYTES = const(1 + 1 + 4)
DEFAULT_SLOTS = const(4)  # groups one device belongs to


def _get32(b, o):
    return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]


def group_limit(max_payload, max_members):
    """The largest group message for these bounds (a member's buffer size)."""
    return GROUP_HEADER_MAX_BYTES + max_payload + TAG_BYTES + 3 + max_members * MAC_BYTES


def encode_group_header_into(buf, src, gid, epoch, ctr, ct_len):
    """Writes a group message up to its ciphertext bytes: returns the
    offset at which they go (also the AEAD's associated data length).
    Raises ``LocalError`` for bad fields, ``BufferTooSmall``."""
    if not 0 <= epoch <= EPOCH_MAX or not 0 <= ctr <= CTR_MAX or ct_len < TAG_BYTES:
        raise LocalError("bad group message field")
    if len(buf) < GROUP_HEADER_MAX_BYTES:
        raise BufferTooSmall("group header buffer too small")
    buf[0] = GROUP_ARRAY
    buf[1] = GROUP_HEAD
    off = E._put_id(buf, 2, src)
    off = E._put_id(buf, off, gid)
    off = E.put_head(buf, off, 0, epoch)
    off = E.put_head(buf, off, 0, ctr)
    return E.put_head(buf, off, 2, ct_len)


class GroupEnvelope(E.Envelope):
    """A decoded group message: src (the hub), gid (in ``dst_*``), epoch,
    ctr, and offsets of the ciphertext and the MAC list in the caller's
    buffer. Reused for every decode; allocates nothing."""

    def __init__(self):
        E.Envelope.__init__(self)
        self.epoch = self.ctr = 0
        self.ct_off = self.ct_len = self.body_len = 0
        self.macs_off = self.macs_len = 0

    def decode_group_into(self, buf, n, limit, max_payload, max_members):
        """Raises ``DecodeError`` (truncated, oversized, not canonical, not
        a group message, field out of range, trailing bytes)."""
        if n > limit:
            raise DecodeError("group message oversized")
        if n > len(buf) or n < 2:
            raise DecodeError("group message truncated")
        if buf[0] != GROUP_ARRAY or buf[1] != GROUP_HEAD:
            raise DecodeError("not a group message")
        self.buf = buf
        off = self._id(buf, 2, n)
        self.src_off, self.src_len = off - self._v, self._v
        off = self._id(buf, off, n)
        self.dst_off, self.dst_len = off - self._v, self._v
        off = self._uint(buf, off, n, 0)
        if self._v > EPOCH_MAX:
            raise DecodeError("group epoch out of range")
        self.epoch = self._v
        off = self._uint(buf, off, n, 0)
        if self._v > CTR_MAX:
            raise DecodeError("group counter out of range")
        self.ctr = self._v
        off = self._uint(buf, off, n, 2)
        if self._v < TAG_BYTES or self._v - TAG_BYTES > max_payload:
            raise DecodeError("group ciphertext size out of range")
        self.ct_off, self.ct_len = off, self._v
        off += self._v
        self.body_len = off  # what the member MACs cover
        off = self._uint(buf, off, n, 2)
        m = self._v
        if m < MAC_BYTES or m % MAC_BYTES or m > max_members * MAC_BYTES:
            raise DecodeError("group MAC list size out of range")
        self.macs_off, self.macs_len = off, m
        off += m
        if off != n:
            raise DecodeError("group message truncated" if off > n
                              else "trailing bytes after group message")
        return self


class GroupMember:
    """One group this device belongs to: its id, epoch, MAC slot, ciphers
    and counter window. Empty (``epoch`` -1) until a key message fills it."""

    def __init__(self, backend, window=DEFAULT_WINDOW):
        self._backend = backend
        self.gid = b""
        self.epoch = -1
        self.index = -1
        self.cipher = None  # the group key's AEAD
        self.mac = None  # this member's MAC key's AEAD
        self.window = ReplayWindow(window)
        self.tag = bytearray(TAG_BYTES)  # scratch for the MAC; made once (Rule 4)

    def install(self, gid, epoch, floor, index, group_key, mac_key):
        self.gid = bytes(gid)
        self.epoch = epoch
        self.index = index
        self.cipher = self._backend.cipher(group_key)
        self.mac = self._backend.cipher(mac_key)
        # Rule 2: nothing below the floor: hi = floor - 1 and every slot
        # marked seen, so the window's last ``size`` counters count as used
        # (the slots stand for counters <= hi; commits clear what they pass).
        w = self.window
        bits = w._bits
        for i in range(len(bits)):
            bits[i] = 0xFF
        w.hi = floor - 1

    def clear(self):
        self.gid = b""
        self.epoch = -1
        self.index = -1
        self.cipher = self.mac = None


class Groups:
    """A device's group memberships: at most ``slots`` groups.

    ``take(buf, n)``: offer every pairwise plaintext from the hub; True if it
    was a key message (consumed). ``receive_into(buf, n, out)``: a group
    message from the broadcast topic; returns the plaintext length and sets
    ``last_group`` (a ``GroupMember``). Options: ``window``,
    ``max_payload``, ``max_members`` (the largest group message this device
    reads is ``group_limit(max_payload, max_members)``).

    Hook for the device application: on ``EV_DATA`` from the session, call
    ``take(out, n)`` first and skip the payload if it returns True; on a
    message from ``moteseal/v1/group/<gid>``, call ``receive_into``.
    Threads: one at a time."""

    def __init__(self, backend, hub_id, slots=DEFAULT_SLOTS, window=DEFAULT_WINDOW,
                 max_payload=GROUP_MAX_PAYLOAD_BYTES, max_members=GROUP_MAX_MEMBERS):
        if not 1 <= max_members <= GROUP_MAX_MEMBERS or \
                not 0 <= max_payload <= GROUP_MAX_PAYLOAD_BYTES:
            raise LocalError("group limits out of range")
        self.hub_id = bytes(hub_id)
        self.members = [GroupMember(backend, window) for _ in range(slots)]
        self.max_payload = max_payload
        self.max_members = max_members
        self.limit = group_limit(max_payload, max_members)
        self._env = GroupEnvelope()
        self.last_group = None
        self.last_len = 0

    def _find(self, buf, off, n):
        # In place, no slice (Rule 4).
        for m in self.members:
            g = m.gid
            if m.epoch >= 0 and len(g) == n:
                i = 0
                while i < n and buf[off + i] == g[i]:
                    i += 1
                if i == n:
                    return m
        return None

    def member(self, gid):
        """The ``GroupMember`` for ``gid``, or None."""
        return self._find(gid, 0, len(gid))

    def take(self, buf, n):
        """Handles a key or leave message from the pairwise session (Rule 1);
        returns False for any other plaintext. Raises ``DecodeError``
        (malformed), ``ReplayError`` (an older epoch), ``LocalError`` (no
        free slot for a new group)."""
        if n < 2 or (buf[0] != KEY_MSG and buf[0] != LEAVE_MSG):
            return False
        g = buf[1]
        fixed = KEY_MSG_FIXED_BYTES if buf[0] == KEY_MSG else LEAVE_MSG_FIXED_BYTES
        if g < 1 or g > E.ID_MAX_BYTES or n != fixed + g:
            raise DecodeError("malformed group key message")
        epoch = _get32(buf, 2 + g)
        if epoch > EPOCH_MAX:
            raise DecodeError("group epoch out of range")
        m = self._find(buf, 2, g)
        if m is not None and epoch < m.epoch:
            raise ReplayError("older group epoch")
        if buf[0] == LEAVE_MSG:
            if m is not None:
                m.clear()
            return True
        floor = _get32(buf, 6 + g)
        index = (buf[10 + g] << 8) | buf[11 + g]
        if floor > CTR_MAX + 1 or index >= GROUP_MAX_MEMBERS:
            raise DecodeError("malformed group key message")
        if m is not None and epoch == m.epoch:
            return True  # a catch-up re-send of the epoch we hold: keep its window
        if m is None:
            for s in self.members:
                if s.epoch < 0:
                    m = s
                    break
            if m is None:
                raise LocalError("no free group slot")
        k = 12 + g
        m.install(buf[2:2 + g], epoch, floor, index, bytes(buf[k:k + KEY_BYTES]),
                  bytes(buf[k + KEY_BYTES:k + 2 * KEY_BYTES]))
        return True

    def receive_into(self, buf, n, out):
        """Opens the group message ``buf[:n]`` into ``out``; returns the
        plaintext length (Rule 3). Raises ``DecodeError`` (malformed, not
        from our hub, a group we do not hold, an epoch ahead of ours: catch
        up), ``ReplayError`` (older epoch, duplicate, too old), ``AuthError``
        (a MAC or tag that does not verify, or no MAC for us),
        ``BufferTooSmall``. Nothing changes on any error."""
        env = self._env.decode_group_into(buf, n, self.limit, self.max_payload,
                                          self.max_members)
        if not env.src_is(self.hub_id):
            raise DecodeError("group message not from our hub")
        m = self._find(buf, env.dst_off, env.dst_len)
        if m is None:
            raise DecodeError("not a group we belong to")
        if env.epoch != m.epoch:
            if env.epoch < m.epoch:
                raise ReplayError("older group epoch")
            raise DecodeError("group epoch ahead of ours: catch up")
        ctr = env.ctr
        m.window.check(ctr)
        if env.ct_len - TAG_BYTES > len(out):
            raise BufferTooSmall("out cannot hold the group payload")
        at = env.macs_off + m.index * MAC_BYTES
        if at + MAC_BYTES > env.macs_off + env.macs_len:
            raise AuthError("message does not authenticate")  # no MAC for us
        tag = m.tag
        m.mac.encrypt_into(ctr, buf, env.body_len, tag, 0, 0, tag, 0)
        acc = 0
        for i in range(MAC_BYTES):  # constant time over the MAC
            acc |= tag[i] ^ buf[at + i]
        if acc:
            raise AuthError("message does not authenticate")
        k = m.cipher.decrypt_into(ctr, buf, env.ct_off, buf, env.ct_off, env.ct_len, out, 0)
        m.window.commit(ctr)  # both tags verified (Rule 3)
        self.last_group = m
        self.last_len = k
        return k

"""Fuzz targets for group broadcast (``device/group.py``): the group
message a member reads from the broadcast topic, and the key message it
reads from its pairwise session. Registered in ``targets.TARGETS``."""

from __future__ import annotations

import hashlib

from device.errors import LocalError, RemoteError
from device.group import Groups
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.peer.group import GroupHub
from tests.fuzz.mutator import Mutator

GID, HUB = b"valves", b"hub"


class _CountingBackend(NaclBackend):
    """Keys from a counter, so a failing input replays exactly."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    def random_bytes(self, n: int) -> bytes:
        self._n += 1
        return hashlib.sha256(b"group-key-%d" % self._n).digest()[:n]


def _world():
    be = _CountingBackend()
    hub = GroupHub(be, HUB)
    keys = hub.create(GID, [b"m%d" % i for i in range(5)])
    seeds = [hub.seal(GID, b"valve=closed"), hub.seal(GID, b""), hub.seal(GID, bytes(200))]
    return be, keys[b"m2"], seeds


_BE, _KEY, _SEEDS = _world()
GROUP_MUTATOR = Mutator(_SEEDS)
KEYMSG_MUTATOR = Mutator([_KEY, _KEY[:-64], b"\x08\x06valves\x00\x00\x00\x01"])


def _member() -> Groups:
    g = Groups(_BE, HUB, max_members=8)
    assert g.take(_KEY, len(_KEY))
    return g


def _state(g: Groups) -> tuple:
    return tuple((m.gid, m.epoch, m.index, m.window.hi, bytes(m.window._bits)) for m in g.members)


def fuzz_group_receive(data: bytes) -> None:
    """``Groups.receive_into``: a genuine message's payload, or a
    ``RemoteError`` that changed nothing; never reads past ``n``."""
    msg = GROUP_MUTATOR(data)
    decisions = []
    for buf in (msg, bytearray(msg) + b"\x87\x08" * 3):
        g = _member()
        before = _state(g)
        out = bytearray(256)
        try:
            n = g.receive_into(buf, len(msg), out)
        except RemoteError as e:
            assert _state(g) == before, "a refused group message changed state"
            decisions.append(type(e))
            continue
        # Only other members' MACs may differ from what the hub sealed.
        m, env = g.last_group, g._env
        mine = env.macs_off + m.index * 8
        assert any(len(s) == len(msg) and s[:env.macs_off] == bytes(msg[:env.macs_off])
                   and s[mine:mine + 8] == bytes(msg[mine:mine + 8]) for s in _SEEDS), \
            "accepted a group message the hub never sealed"
        decisions.append(bytes(out[:n]))
    assert decisions[0] == decisions[1], "decision depends on bytes past n"


def fuzz_group_key_message(data: bytes) -> None:
    """``Groups.take``: True, False, or ``RemoteError``/``LocalError``
    (no free slot) that changed nothing."""
    msg = KEYMSG_MUTATOR(data)
    g = _member()
    before = _state(g)
    try:
        r = g.take(msg, len(msg))
    except (RemoteError, LocalError):
        assert _state(g) == before
        return
    assert r in (True, False)
    if not r:
        assert _state(g) == before


TARGETS = {"group_receive": fuzz_group_receive, "group_key_message": fuzz_group_key_message}
SEEDS = {"group_receive": GROUP_MUTATOR, "group_key_message": KEYMSG_MUTATOR}

"""Transfers (device/transfer.py, the receiver; moteseal/hub/transfer.py,
the sender) in memory: the wire forms, every refusal and its reason, the
installed file left untouched by each, resume after a lost link and after
a reboot (the store re-hashed), and the same receiver on MicroPython.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device import transfer as T
from moteseal.hub import transfer as H
from device.errors import DecodeError, RemoteError
from moteseal.hub.transfer import Outgoing, TransferError
from tests.mp_helpers import run_mp_json
from tests.pair import Pair

PIECE_MAX = 65  # the MicroPython device's: a 74-byte receive buffer less the piece head


def _data(n: int = 5000) -> bytes:
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


class Device:
    """A receiver with its store and the statuses it answered."""

    def __init__(self, store: T.MemoryStore | None = None) -> None:
        self.store = store or T.MemoryStore()
        self.rx = T.Receiver(self.store, PIECE_MAX)
        self.rx.resume()
        self.out = bytearray(H.STATUS_BYTES)

    def feed(self, frame: bytes) -> bytes | None:
        n = self.rx.handle_into(bytearray(frame), len(frame), self.out)
        return bytes(self.out[:n]) if n else None


def run(dev: Device, snd: Outgoing, drop=lambda i, f: False, limit: int = 100000) -> int:
    """Carries frames both ways until the sender is done (or nothing moves);
    ``drop(i, frame)`` loses frame i. Returns frames carried."""
    now = 0.0
    todo = snd.start(now)
    i = 0
    while not snd.done and i < limit:
        if not todo:
            now += snd.retry_s  # silence: the sender asks again
            todo = snd.due(now)
            continue
        frame = todo.pop(0)
        i += 1
        if drop(i, frame):
            continue
        st = dev.feed(frame)
        if st is not None:
            todo += snd.on_status(st, now)
    return i


def test_a_file_arrives_in_pieces_and_is_installed_once() -> None:
    dev, data = Device(), _data()
    snd = Outgoing(b"config.json", data, 7)
    run(dev, snd)
    assert snd.state == "installed" and snd.piece == PIECE_MAX
    assert dev.store.files[b"config.json"] == data and dev.store.installed(b"config.json") == 7
    assert dev.rx.counts["installed"] == 1
    assert snd.sent_pieces == -(-len(data) // PIECE_MAX)


def test_resume_after_lost_frames_goes_back_to_the_device_offset() -> None:
    dev, data = Device(), _data(20000)
    snd = Outgoing(b"fw.bin", data, 1)
    # One piece lost (a gap: go-back-N), then two "link cuts" longer than
    # the window (silence: the manifest again).
    run(dev, snd, drop=lambda i, f: i == 50 or 100 <= i < 130 or 200 <= i < 230)
    assert snd.state == "installed" and dev.store.files[b"fw.bin"] == data
    assert dev.rx.counts["out_of_order"] > 0 and snd.manifests > 1


def test_resume_after_a_reboot_rehashes_what_the_store_holds() -> None:
    dev, data = Device(), _data(20000)
    snd = Outgoing(b"fw.bin", data, 1)
    run(dev, snd, limit=150)  # part way
    held = dev.store.length()
    assert 0 < held < len(data) and not snd.done
    dev = Device(dev.store)  # a reboot: same flash, a new receiver
    assert dev.rx.offset == held
    now = 100.0
    todo = snd.due(now)  # silence: the manifest again, answered with the resume point
    assert todo and todo[0][0] == H.MANIFEST
    while todo:
        st = dev.feed(todo.pop(0))
        if st is not None:
            todo += snd.on_status(st, now)
    assert snd.state == "installed" and dev.store.files[b"fw.bin"] == data


def _installed(version: int = 5) -> Device:
    dev = Device()
    run(dev, Outgoing(b"app.cfg", b"old contents", version))
    return dev


def test_a_piece_that_does_not_match_the_manifest_hash_is_refused() -> None:
    dev, data = _installed(), _data(3000)
    snd = Outgoing(b"app.cfg", data, 6)
    snd.data = data[:1000] + b"X" + data[1001:]  # a hub-side wrong piece
    run(dev, snd)
    assert (snd.state, snd.reason) == ("refused", "hash_mismatch")
    assert dev.store.files[b"app.cfg"] == b"old contents" and dev.store.man is None


def test_an_older_or_equal_version_is_refused() -> None:
    dev = _installed(5)
    for v in (5, 4):
        snd = Outgoing(b"app.cfg", b"new", v)
        run(dev, snd)
        assert (snd.state, snd.reason) == ("refused", "old_version")
    assert dev.store.files[b"app.cfg"] == b"old contents"


def test_a_replayed_manifest_of_an_installed_transfer_installs_nothing() -> None:
    dev = _installed(5)
    old = Outgoing(b"app.cfg", b"again", 5)
    run(dev, old)
    man = old.manifest()
    # The same manifest again, answered as before (the answer may have been
    # lost), and under a new transfer id refused: the version is not newer.
    assert T.parse_status(dev.feed(man), H.STATUS_BYTES)[1] == H.ST_REFUSED
    fresh = Outgoing(b"app.cfg", b"again", 5, tid=old.tid ^ 1)
    run(dev, fresh)
    assert fresh.reason == "old_version" and dev.store.files[b"app.cfg"] == b"old contents"


def test_a_truncated_transfer_is_never_installed_and_an_abort_discards_it() -> None:
    dev, data = _installed(), _data(3000)
    snd = Outgoing(b"app.cfg", data, 9)
    run(dev, snd, limit=20)  # the sender stops part way
    assert not snd.done and dev.store.files[b"app.cfg"] == b"old contents"
    st = dev.feed(snd.abort())
    assert T.parse_status(st, len(st))[1] == H.ST_ABORTED
    assert dev.store.man is None and dev.store.length() == 0
    assert dev.store.files[b"app.cfg"] == b"old contents"


def test_a_piece_past_the_announced_size_is_refused() -> None:
    dev = _installed()
    snd = Outgoing(b"app.cfg", b"1234", 9)
    snd.data = b"12345678"  # more bytes than the manifest said (sha of the first 4)
    snd.sha = hashlib.sha256(b"1234").digest()
    man = T.encode_manifest(snd.tid, 9, 4, 0, snd.sha, b"app.cfg")
    st = dev.feed(bytes(man))
    snd.on_status(st, 0)
    piece = bytes([H.PIECE]) + snd.tid.to_bytes(4, "big") + bytes(4) + b"12345678"
    st = dev.feed(piece)
    assert T.parse_status(st, len(st))[1:3] == (H.ST_REFUSED, H.R_PAST_END)
    assert dev.store.files[b"app.cfg"] == b"old contents"


def test_one_transfer_in_flight_at_most_a_new_one_replaces_it() -> None:
    dev = Device()
    a = Outgoing(b"a.txt", _data(3000), 1)
    run(dev, a, limit=5)
    assert dev.store.man[5] == b"a.txt" and dev.store.length() > 0
    # A refused manifest of another transfer leaves the one in flight alone.
    bad = bytearray(Outgoing(b"c.txt", b"c", 1).manifest())
    bad[13] = 0x80  # unknown flags
    st = dev.feed(bytes(bad))
    assert T.parse_status(st, len(st))[1:3] == (H.ST_REFUSED, H.R_FLAGS)
    assert dev.store.man[5] == b"a.txt"
    # An acceptable one replaces it: the hub runs one per device, so it
    # has given the old one up; its partial file goes.
    b = Outgoing(b"b.txt", b"b", 1)
    run(dev, b)
    assert b.state == "installed" and dev.store.man is None and dev.store.length() == 0
    assert set(dev.store.files) == {b"b.txt"}


def test_the_same_transfer_id_with_another_manifest_is_refused_busy() -> None:
    dev = Device()
    a = Outgoing(b"a.txt", _data(3000), 1)
    run(dev, a, limit=5)
    other = bytearray(Outgoing(b"b.txt", b"b", 1).manifest())
    other[1:5] = a.tid.to_bytes(4, "big")
    st = dev.feed(bytes(other))
    assert T.parse_status(st, len(st))[1:3] == (H.ST_REFUSED, H.R_BUSY)
    assert dev.store.man is None and dev.store.files == {}  # neither is taken


@pytest.mark.parametrize("name", [b"", b"../x", b"a/b", b"a\\b", b".xstate", b"c:x", b"x" * 17,
                                  b"a b", b"\xff"])
def test_a_bad_name_is_refused_on_both_sides(name: bytes) -> None:
    with pytest.raises(TransferError):
        Outgoing(name, b"x", 1)
    raw = bytearray(T.encode_manifest(1, 1, 1, 0, bytes(32), b"ok"))
    raw = raw[:46] + bytes([len(name)]) + name
    dev = Device()
    st = dev.feed(bytes(raw))
    assert T.parse_status(st, len(st))[1:3] == (H.ST_REFUSED, H.R_BAD_NAME)


def test_size_flags_and_malformed_frames_are_refused_or_counted() -> None:
    dev = Device(T.MemoryStore(room=100))
    st = dev.feed(bytes(T.encode_manifest(1, 1, 101, 0, bytes(32), b"big")))
    assert T.parse_status(st, len(st))[2] == H.R_TOO_LARGE
    raw = bytearray(T.encode_manifest(2, 1, 10, 0, bytes(32), b"f"))
    raw[13] = 0x80
    st = dev.feed(bytes(raw))
    assert T.parse_status(st, len(st))[2] == H.R_FLAGS
    for bad in (b"\x10", b"\x10" + bytes(50), b"\x11\0\0\0\x02\0\0\0\0", b"\x11" + bytes(8) + bytes(66),
                b"\x13\0", b"\x14"):
        assert dev.feed(bad) is None
    assert dev.rx.counts["malformed"] == 6
    with pytest.raises(DecodeError):
        T.parse_status(b"\x12" + bytes(11), 12)


def test_decoders_raise_only_remote_errors_on_any_prefix() -> None:
    man = bytes(T.encode_manifest(3, 4, 5, 1, bytes(range(32)), b"name"))
    for i in range(len(man) + 1):
        try:
            T.parse_manifest(man[:i], i)
        except RemoteError:
            pass
    assert T.parse_manifest(man, len(man)) == (3, 4, 5, 1, bytes(range(32)), b"name")


def test_a_tampered_envelope_is_dropped_by_the_session_before_the_receiver() -> None:
    """Pieces travel sealed: a flipped bit fails the AEAD and a replayed
    manifest envelope fails the replay window, so the receiver sees
    neither; what the session lets through installs the file."""
    from device.errors import AuthError, ReplayError

    pair = Pair()
    pair.handshake()
    dev, data = Device(), _data(700)
    snd = Outgoing(b"f.bin", data, 1)
    man_env = pair.peer.send(b"sensor-1", snd.start(0)[0])
    todo = []
    _ev, pt = pair.device.receive(man_env)
    todo += snd.on_status(dev.feed(pt), 0)
    first = pair.peer.send(b"sensor-1", todo[0])
    bad = bytearray(first)
    bad[-20] ^= 1
    with pytest.raises(AuthError):
        pair.device.receive(bytes(bad))
    with pytest.raises(ReplayError):
        pair.device.receive(man_env)
    assert dev.rx.offset == 0 and dev.rx.counts["pieces"] == 0
    _ev, pt = pair.device.receive(first)
    dev.feed(pt)
    for f in todo[1:]:
        _ev, pt = pair.device.receive(pair.peer.send(b"sensor-1", f))
        st = dev.feed(pt)
        if st:
            snd.on_status(st, 0)
    assert snd.state == "installed" and dev.store.files[b"f.bin"] == data


MP_RECEIVER = """
import json, hashlib
from device import transfer as T
data = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(3000))
store = T.MemoryStore()
rx = T.Receiver(store, 65)
out = bytearray(13)
sha = hashlib.sha256(data).digest()
def feed(b):
    return rx.handle_into(b, len(b), out)
states = []
n = feed(T.encode_manifest(7, 3, len(data), 0, sha, b"cfg.bin"))
states.append(out[5])
buf = bytearray(9 + 65)
off = 0
while off < len(data):
    k = min(65, len(data) - off)
    buf[0] = 17
    buf[1:5] = (7).to_bytes(4, "big")
    buf[5:9] = off.to_bytes(4, "big")
    buf[9:9 + k] = data[off:off + k]
    if off == 650:  # a gap: one piece skipped once, answered with the resume point
        buf[5:9] = (off + 65).to_bytes(4, "big")
        if feed(memoryview(buf)[:9 + k]):
            states.append(("gap", out[6], int.from_bytes(out[7:11], "big")))
        buf[5:9] = off.to_bytes(4, "big")
    n = feed(memoryview(buf)[:9 + k])
    off += k
states.append(out[5])
old = T.encode_manifest(8, 3, 1, 0, sha, b"cfg.bin")
feed(old)
print(json.dumps({"ok": store.files[b"cfg.bin"] == data, "states": states,
                  "old": [out[5], out[6]], "counts": rx.counts}))
"""


@pytest.mark.micropython
def test_the_receiver_runs_on_micropython() -> None:
    r = run_mp_json(MP_RECEIVER)
    assert r["ok"]
    assert r["states"] == [H.ST_RECEIVING, ["gap", H.R_RESUME, 650], H.ST_INSTALLED]
    assert r["old"] == [H.ST_REFUSED, H.R_OLD_VERSION]
    assert r["counts"]["out_of_order"] == 1 and r["counts"]["installed"] == 1


def test_resume_statuses_cannot_make_the_sender_exceed_its_rate() -> None:
    """A device that answers every piece with "resume from 0" gets the
    window once and then ``rate`` pieces per second, not a window each."""
    snd = Outgoing(b"f.bin", _data(65 * 400), 1, rate=100.0)
    snd.start(0.0)
    st = bytearray(H.STATUS_BYTES)
    T.encode_status_into(st, snd.tid, H.ST_RECEIVING, H.R_RESUME, 0, PIECE_MAX)
    sent = sum(len(snd.on_status(bytes(st), 0.001 * i)) for i in range(1000))  # 1000 in 1 s
    assert sent <= 16 + 100 + 1


def test_the_rate_caps_pieces_per_second_and_the_window_caps_pieces_in_flight() -> None:
    snd = Outgoing(b"f.bin", _data(65 * 200), 1, rate=10.0, window=4)
    assert snd.window == 16  # never below twice the device's acknowledgement interval
    snd.start(0.0)
    st = bytearray(H.STATUS_BYTES)
    T.encode_status_into(st, snd.tid, H.ST_RECEIVING, H.R_RESUME, 0, PIECE_MAX)
    first = snd.on_status(bytes(st), 0.0)
    assert len(first) == 16  # a full window to start with
    assert len(snd.due(0.5)) == 0  # window full: nothing until the device acknowledges
    T.encode_status_into(st, snd.tid, H.ST_RECEIVING, H.R_NONE, 16 * PIECE_MAX, PIECE_MAX)
    assert len(snd.on_status(bytes(st), 1.0)) == 10  # 1 s at 10 pieces/s
    assert len(snd.due(1.5)) == 5


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_any_frames_give_a_status_or_a_counted_drop_never_an_exception(frames: list[bytes]) -> None:
    """Fuzz invariant (STYLE.md section 3) for ``Receiver.handle_into``:
    arbitrary frames, also after a real manifest, return a status length
    (0 or ``STATUS_BYTES``) and nothing else escapes."""
    dev = Device()
    man = bytes(T.encode_manifest(9, 1, 200, 0, bytes(32), b"f"))
    for f in [man, *frames, *[bytes([0x11]) + bytes(4) + x for x in frames]]:
        n = dev.rx.handle_into(bytearray(f), len(f), dev.out)
        assert n in (0, H.STATUS_BYTES)


def test_a_device_stopped_after_the_last_piece_installs_at_resume() -> None:
    """All bytes on flash but no swap yet (a reboot in between): the next
    receiver finishes it (or refuses it, if the bytes are wrong)."""
    data = _data(1000)
    for tamper, state in ((False, H.ST_INSTALLED), (True, H.ST_REFUSED)):
        store = T.MemoryStore()
        man = T.encode_manifest(7, 1, len(data), 0, hashlib.sha256(data).digest(), b"f.bin")
        store.begin(T.parse_manifest(man, len(man)), man, len(man))
        store.append(data[:-1] + (b"X" if tamper else data[-1:]), 0, len(data))
        dev = Device(store)
        assert dev.rx.pending == H.STATUS_BYTES
        assert T.parse_status(dev.rx.out, H.STATUS_BYTES)[1] == state
        assert store.man is None and (store.files.get(b"f.bin") == data) == (not tamper)

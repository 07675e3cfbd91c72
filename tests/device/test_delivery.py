"""End-to-end delivery (device/delivery.py + moteseal/peer/delivery.py):
retention, cumulative acknowledgements and deduplication, through a channel
that loses, duplicates and reorders, with the peer killed (its state reopened
from the SQLite file) and the device resending after each "handshake".
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from device import delivery as D
from device.errors import LocalError, MessageTooLarge
from moteseal.peer.delivery import Inbox, ReadingStore
from tests.mp_helpers import run_mp_json


def _frame(box: D.Outbox, seq: int) -> bytes:
    return bytes(box.view(seq)[:box.length(seq)])


def test_a_reading_is_framed_with_run_seq_and_back() -> None:
    box = D.Outbox(slots=4, reading_bytes=8)
    with pytest.raises(LocalError):
        box.add(b"x", 1)  # no run yet
    box.start(0x01020304)
    box.start(99)  # later handshakes of the same run keep the run's name
    assert box.add(b"abc", 3) == 0
    assert _frame(box, 0) == bytes([1, 1, 2, 3, 4, 0, 0, 0, 0, 0]) + b"abc"
    assert D.parse_reading(_frame(box, 0), 13) == (0x01020304, 0, 0)
    box.add(b"d", 1)
    assert D.parse_reading(_frame(box, 1), 11) == (0x01020304, 1, 1)  # one older reading retained
    with pytest.raises(MessageTooLarge):
        box.add(bytes(9), 9)


def test_a_full_outbox_evicts_the_oldest_and_counts_it() -> None:
    box = D.Outbox(slots=3, reading_bytes=4)
    box.start(7)
    for i in range(5):
        box.add(bytes([i]), 1)
    assert box.evicted == 2 and list(box.pending()) == [2, 3, 4]
    assert _frame(box, 2)[-1] == 2 and _frame(box, 4)[-1] == 4
    with pytest.raises(LocalError):
        box.view(1)


def test_acks_free_what_they_cover_and_nothing_else() -> None:
    box = D.Outbox(slots=8)
    box.start(5)
    for i in range(6):
        box.add(b"r", 1)
    ack = bytearray(D.ACK_BYTES)
    D.encode_ack_into(ack, 4, 5)  # an earlier run's
    assert box.ack(ack, len(ack)) and box.count() == 6
    D.encode_ack_into(ack, 5, 2)
    assert box.ack(ack, len(ack)) and list(box.pending()) == [3, 4, 5]
    D.encode_ack_into(ack, 5, 1)  # an older, reordered ack
    assert box.ack(ack, len(ack)) and list(box.pending()) == [3, 4, 5]
    D.encode_ack_into(ack, 5, 1000)  # beyond what was sent: frees only what exists
    assert box.ack(ack, len(ack)) and box.count() == 0 and box.next_seq == 6
    assert not box.ack(b"interval=30", 11)  # a command is not an ack


def test_resend_is_due_only_for_an_unacknowledged_oldest_reading() -> None:
    box = D.Outbox(slots=4)
    box.start(1)
    assert not box.resend_due(100, 10)
    box.add(b"a", 1)
    box.mark_sent(0, 100)
    assert not box.resend_due(105, 10) and box.resend_due(110, 10)
    ack = bytearray(D.ACK_BYTES)
    D.encode_ack_into(ack, 1, 0)
    box.ack(ack, len(ack))
    assert not box.resend_due(500, 10)


def test_the_inbox_delivers_in_order_once_and_counts_evicted_gaps(tmp_path: Path) -> None:
    inbox = Inbox(ReadingStore(tmp_path / "r.db"))
    box = D.Outbox(slots=2)
    box.start(3)
    box.add(b"a", 1)
    got = inbox.accept("d", _frame(box, 0))
    assert got.body == b"a" and got.ack == bytes([6, 0, 0, 0, 3, 0, 0, 0, 0])
    assert inbox.accept("d", _frame(box, 0)).duplicate  # again: dropped, acked again
    assert box.ack(got.ack, len(got.ack)) and box.count() == 0
    for b in (b"b", b"c", b"d"):  # the peer hears none of these; b is evicted
        box.add(b, 1)
    assert box.evicted == 1
    assert inbox.accept("d", _frame(box, 3)).duplicate  # d before c: early, not stored
    got = inbox.accept("d", _frame(box, 2))  # c: the oldest retained, after the lost b
    assert got.body == b"c" and got.lost == 1
    assert inbox.accept("d", _frame(box, 3)).body == b"d"
    assert [r[4] for r in inbox.store.readings("d")] == [b"a", b"c", b"d"]
    assert inbox.store.high_water("d") == (3, 3, 1)
    assert inbox.accept("d", b"\xa1aX\x01").body == b"\xa1aX\x01"  # unframed: passed on, not stored
    assert len(inbox.store.readings()) == 3


def test_a_new_run_starts_afresh_and_an_old_run_is_a_duplicate(tmp_path: Path) -> None:
    inbox = Inbox(ReadingStore(tmp_path / "r.db"))
    old, new = D.Outbox(), D.Outbox()
    old.start(10)
    new.start(12)
    for _ in range(3):
        old.add(b"o", 1)
    new.add(b"n", 1)
    assert inbox.accept("d", _frame(old, 0)).body == b"o"
    assert inbox.accept("d", _frame(new, 0)).body == b"n"
    late = inbox.accept("d", _frame(old, 1))
    assert late.duplicate and D.parse_reading(_frame(new, 0), 11)[0] == 12
    assert late.ack == bytes([6, 0, 0, 0, 12, 0, 0, 0, 0])


@pytest.mark.parametrize("seed", range(4))
def test_nothing_is_lost_or_doubled_through_loss_duplication_and_peer_kills(
        tmp_path: Path, seed: int) -> None:
    """A lossy, duplicating, reordering channel both ways; the peer is
    "killed" (its Inbox and store reopened from the file, its in-flight
    queue lost) every so often, and the device resends everything retained
    after each such restart (as after a re-handshake) and when a resend is
    due. Every reading the device did not evict arrives exactly once, in
    order; the evicted ones are counted on both sides."""
    rnd = random.Random(seed)
    path = tmp_path / "r.db"
    inbox = Inbox(ReadingStore(path))
    box = D.Outbox(slots=16)
    box.start(1000 + seed)
    up: list[bytes] = []
    down: list[bytes] = []
    made: list[bytes] = []
    now = 0

    def send(seq: int) -> None:
        frame = _frame(box, seq)
        box.mark_sent(seq, now)
        for _ in range(2 if rnd.random() < 0.1 else 1):
            if rnd.random() > 0.05:
                up.insert(rnd.randrange(len(up) + 1) if rnd.random() < 0.1 else len(up), frame)

    for step in range(3000):
        now += 1
        if step < 2400 and rnd.random() < 0.25:
            body = b"r%d" % len(made)
            made.append(body)
            send(box.add(body, len(body)))
        if rnd.random() < 0.01:  # peer killed: in-flight uplink lost, state from disk
            inbox.store.close()
            inbox = Inbox(ReadingStore(path))
            up.clear()
            for seq in box.pending():  # the device's re-handshake resends all
                send(seq)
        for _ in range(rnd.randrange(8)):
            if up:
                got = inbox.accept("dev", up.pop(0))
                if got.ack and rnd.random() > 0.05:
                    down.append(got.ack)
        while down:
            a = down.pop(0)
            assert box.ack(a, len(a))
        if box.resend_due(now, 20):
            for seq in box.pending():
                send(seq)
    while box.count():  # the link heals: resend until everything is acknowledged
        for seq in box.pending():
            got = inbox.accept("dev", _frame(box, seq))
            if got.ack:
                box.ack(got.ack, len(got.ack))
    stored = [r[4] for r in inbox.store.readings("dev")]
    boot, seq, lost = inbox.store.high_water("dev")
    # The device counts what it evicted unacknowledged; some of those had
    # arrived (their acknowledgement was lost). The peer counts the gaps.
    assert lost <= box.evicted
    assert len(stored) + lost == len(made)
    assert len(set(stored)) == len(stored)  # exactly once
    assert stored == sorted(stored, key=lambda b: int(b[1:]))  # in order
    assert set(stored) <= set(made)


def test_the_outbox_allocates_nothing_per_reading_on_micropython() -> None:
    out = run_mp_json("""
import json, micropython
from device import delivery as D
box = D.Outbox(16, 32)
box.start(7)
body = bytearray(b"0123456789abcdef")
ack = bytearray(D.ACK_BYTES)
D.encode_ack_into(ack, 7, 0)

def run():
    n = 0
    for i in range(100):
        s = box.add(body, 16)
        box.view(s)
        n = box.length(s)
        box.mark_sent(s, i)
        D.encode_ack_into(ack, 7, s)
        box.ack(ack, 9)
        box.resend_due(i, 5)
    return n

run()  # warm: the first call may intern and cache
box = D.Outbox(16, 32)
box.start(7)
n, ok = 0, False  # globals exist before the lock: a new global would allocate
micropython.heap_lock()
try:
    n = run()
    ok = True
except MemoryError:
    pass
micropython.heap_unlock()
print(json.dumps([ok, n, box.count(), box.next_seq, box.evicted]))
""")
    assert out == [True, 26, 0, 100, 0]


def test_a_renamed_run_is_delivered_after_a_lost_counter_file(tmp_path: Path) -> None:
    """After a lost counter file the device's new run starts with a counter
    the peer has seen (its readings look like an old run's duplicates); the
    counter notice (EV_COUNTER_BEHIND) renames the run and the retained
    readings then arrive."""
    inbox = Inbox(ReadingStore(tmp_path / "r.db"))
    before = D.Outbox()
    before.start(40)
    before.add(b"old", 3)
    assert inbox.accept("d", _frame(before, 0)).body == b"old"
    wiped = D.Outbox()
    wiped.start(0)  # the counter restarted at 0
    wiped.add(b"new", 3)
    assert inbox.accept("d", _frame(wiped, 0)).duplicate  # dropped, never stored
    wiped.rename(41)  # the counter jumped past the peer's 40
    got = inbox.accept("d", _frame(wiped, 0))
    assert got.body == b"new" and D.parse_reading(_frame(wiped, 0), 13)[0] == 41
    assert [r[4] for r in inbox.store.readings("d")] == [b"old", b"new"]

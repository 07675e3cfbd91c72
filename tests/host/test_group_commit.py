"""Group commit (moteseal/peer/delivery.py Rule 4, listen.py): readings
handled together are stored in one transaction, decided as one by one,
acknowledged only after the commit, and a failed commit stores nothing,
moves no mark and acknowledges nothing."""

import sqlite3
import struct

from device import delivery as D
from moteseal.peer.delivery import Inbox, ReadingStore
from moteseal.peer.listen import PeerListener
from tests.pair import Pair


def reading(seq, boot=1, back=0, body=b"r"):
    return struct.pack(">BIIB", D.READING, boot, seq, back) + body + bytes([seq & 0xFF])


class LoggingStore(ReadingStore):
    def __init__(self, path, log, fail_seq=None):
        super().__init__(path)
        self.log, self.fail_seq, self.commits = log, fail_seq, 0

    def _in_delivery(self, reading_id, device, ts, body):
        if self.fail_seq is not None and body[-1] == self.fail_seq:
            raise sqlite3.OperationalError("disk I/O error")

    def deliver_many(self, items):
        super().deliver_many(items)
        self.commits += 1
        self.log.append(("commit", [i[2] for i in items]))


class LoggingLink:
    def __init__(self, log):
        self.log = log

    def send(self, data):
        self.log.append(("send", len(data)))


def test_a_batch_is_decided_as_one_by_one_and_committed_once(tmp_path):
    log = []
    store = LoggingStore(tmp_path / "r.db", log)
    inbox = Inbox(store)
    # reading 3 with back=1 is early: the device still retains 2
    accs = inbox.accept_many([("d", reading(0)), ("d", reading(1)), ("d", reading(1)),
                              ("e", reading(0)), ("d", reading(3, back=1)), ("d", b"raw")])
    assert [a.seq for a in accs] == [0, 1, 1, 0, 3, -1]
    assert [a.duplicate for a in accs] == [False, False, True, False, True, False]
    assert accs[2].ack == accs[1].ack  # the duplicate is answered with the batch's mark
    assert store.commits == 1 and log == [("commit", [0, 1, 0])]
    assert [(r[0], r[2]) for r in store.readings()] == [("d", 0), ("d", 1), ("e", 0)]
    assert store.high_water("d")[:2] == (1, 1)


def test_a_failed_commit_stores_nothing_and_moves_no_mark(tmp_path):
    store = LoggingStore(tmp_path / "r.db", [], fail_seq=2)
    inbox = Inbox(store)
    inbox.accept("d", reading(0))
    batch = [("d", reading(1)), ("d", reading(2)), ("d", reading(3))]
    try:
        inbox.accept_many(batch)
        raise AssertionError("StoreError expected")
    except Exception as e:  # noqa: BLE001 - the class is what is checked
        assert type(e).__name__ == "StoreError"
    assert [r[2] for r in store.readings()] == [0]
    assert store.high_water("d")[:2] == (1, 0)
    store.fail_seq = None  # the disk recovers; the devices send the same again
    assert [a.seq for a in inbox.accept_many(batch) if not a.duplicate] == [1, 2, 3]
    assert [r[2] for r in store.readings()] == [0, 1, 2, 3]


def _listener(tmp_path, fail_seq=None):
    p = Pair()
    p.handshake()
    log = []
    store = LoggingStore(tmp_path / "r.db", log, fail_seq)
    listener = PeerListener(p.peer, LoggingLink(log), lambda r: None, inbox=Inbox(store))
    return p, listener, log


def test_acknowledgements_leave_only_after_the_commit(tmp_path):
    p, listener, log = _listener(tmp_path)
    envs = [p.device.send(reading(i)) for i in range(5)]
    reports = listener.handle_many(envs)
    assert [r["event"] for r in reports] == ["telemetry"] * 5
    assert log[0] == ("commit", [0, 1, 2, 3, 4])
    assert [e[0] for e in log[1:]] == ["send"] * 5
    assert listener.counts["telemetry"] == 5


def test_a_failed_commit_acknowledges_nothing(tmp_path):
    p, listener, log = _listener(tmp_path, fail_seq=3)
    reports = listener.handle_many([p.device.send(reading(i)) for i in range(5)])
    assert [r["event"] for r in reports] == ["store_failed"] * 5
    assert log == [] and listener.counts["store_errors"] == 5

"""The hub's transfer service (moteseal/hub/push.py) on its own thread, with
a real store and a real device receiver (device/transfer.py) behind a link
that is a function call: a queued file is installed, a device that goes
silent times the transfer out and is sent an abort, an abort requested
through the store reaches the device, and transfers to one device run one
at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from device import transfer as T
from moteseal.hub import transfer as H
from moteseal.hub.push import TransferService, TransferStore
from tests.polling import wait_until


class Rig:
    """A service whose link delivers to a receiver while ``up``."""

    def __init__(self, tmp: Path, **kw: float) -> None:
        self.store = TransferStore(str(tmp / "hub.sqlite"))
        self.dev = T.Receiver(T.MemoryStore(), 65)
        self.out = bytearray(H.STATUS_BYTES)
        self.up = True
        self.sent: list[bytes] = []
        self.reports: list[dict] = []
        self.lock = threading.Lock()
        self.svc = TransferService(self.store, self.send, self.reports.append, poll_s=0.05,
                                   **kw).start()

    def send(self, device: str, frame: bytes) -> None:
        with self.lock:
            self.sent.append(frame)
            if not self.up:
                return
            n = self.dev.handle_into(bytearray(frame), len(frame), self.out)
            if n:
                self.svc.on_status(device, bytes(self.out[:n]))

    def close(self) -> None:
        self.svc.stop()
        self.store.close()


def test_a_queued_file_is_installed_and_the_next_waits_its_turn(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        a = rig.store.queue("d1", b"a.bin", bytes(range(256)) * 20, 1)
        b = rig.store.queue("d1", b"b.bin", b"second", 1)
        assert wait_until(lambda: (rig.store.get(b) or {}).get("state") == "installed", 20, step=0.02)
        assert rig.store.get(a)["state"] == "installed" and rig.store.get(a)["offset"] == 5120
        assert rig.dev.store.files[b"a.bin"] == bytes(range(256)) * 20
        started = [r["id"] for r in rig.reports if r["event"] == "transfer_started"]
        done = [r["id"] for r in rig.reports if r["event"] == "transfer_installed"]
        assert started == [a, b] and done == [a, b]
    finally:
        rig.close()


def test_a_silent_device_times_out_and_is_sent_an_abort(tmp_path: Path) -> None:
    rig = Rig(tmp_path, retry_s=0.2, timeout_s=1.0)
    try:
        rig.up = False
        row = rig.store.queue("d1", b"a.bin", bytes(3000), 1)
        assert wait_until(lambda: (rig.store.get(row) or {}).get("state") == "timeout", 20, step=0.02)
        assert rig.sent[-1][0] == H.ABORT and rig.sent.count(rig.sent[0]) >= 2  # asked again
    finally:
        rig.close()


def test_an_abort_through_the_store_reaches_the_device(tmp_path: Path) -> None:
    rig = Rig(tmp_path, retry_s=0.3)
    try:
        real = rig.send

        def lossy(device: str, frame: bytes) -> None:  # nothing past 650 bytes gets through
            if frame[0] == H.PIECE and int.from_bytes(frame[5:9], "big") >= 650:
                return
            real(device, frame)

        rig.svc._send = lossy
        row = rig.store.queue("d1", b"a.bin", bytes(3000), 1)
        assert wait_until(lambda: rig.dev.store.length() == 650, 20, step=0.02)
        assert rig.store.request_abort(row)
        assert wait_until(lambda: (rig.store.get(row) or {}).get("state") == "aborted", 20, step=0.02)
        assert wait_until(lambda: rig.dev.store.man is None and rig.dev.store.length() == 0, 20, step=0.02)
        assert not rig.store.request_abort(row)  # ended already
        # A queued transfer (its device busy with another) ends without starting.
        rig.up = False
        busy = rig.store.queue("d2", b"x", bytes(3000), 1)
        assert wait_until(lambda: (rig.store.get(busy) or {}).get("state") == "sending", 20, step=0.02)
        queued = rig.store.queue("d2", b"y", b"y", 1)
        assert rig.store.request_abort(queued)
        assert wait_until(lambda: (rig.store.get(queued) or {}).get("state") == "aborted", 20, step=0.02)
        assert not any(r["event"] == "transfer_started" and r["id"] == queued for r in rig.reports)
    finally:
        rig.close()

"""Hub sinks read the store after a persisted cursor: a sink that fails
loses nothing, holds up nothing, and catches up in order once it works
again; its errors and backlog show meanwhile. Plus the Python API sink."""

from __future__ import annotations

import threading
from pathlib import Path

import cbor2

from moteseal.hub.sinks import CallbackSink, SinkWorker
from moteseal.hub.store import HubStore
from tests.polling import wait_until


def _fill(store: HubStore, device: str, start: int, n: int) -> None:
    for seq in range(start, start + n):
        store.deliver(device, 7, seq, cbor2.dumps({"seq": seq, "t": 20.5}), 0)


def test_a_failing_sink_loses_nothing_holds_up_nothing_and_catches_up_in_order(tmp_path: Path) -> None:
    store = HubStore(str(tmp_path / "r.sqlite"))
    got: list[int] = []
    broken = threading.Event()
    broken.set()

    def on_reading(device: str, fields: dict, meta: dict) -> None:
        if broken.is_set():
            raise ConnectionError("broker down")
        got.append(fields["seq"])

    store.cursor("python-0")  # the sink exists before the readings arrive
    stop = threading.Event()
    worker = SinkWorker(store, CallbackSink(on_reading, "python-0")).start(stop)
    try:
        _fill(store, "d", 0, 30)  # the store takes readings while the sink fails
        assert wait_until(lambda: worker.errors >= 1, 15, step=0.05)
        assert got == [] and worker.backlog() == 30
        broken.clear()
        assert wait_until(lambda: got == list(range(30)), 30, step=0.05), got
        _fill(store, "d", 30, 5)
        assert wait_until(lambda: got == list(range(35)), 15, step=0.05)
        assert worker.backlog() == 0 and worker.errors >= 1
    finally:
        stop.set()
        worker.thread.join(10)
    # The cursor persists: a new worker (a restarted hub) starts after it.
    again: list[int] = []
    stop2 = threading.Event()
    w2 = SinkWorker(store, CallbackSink(lambda d, f, m: again.append(f["seq"]), "python-0")).start(stop2)
    try:
        _fill(store, "d", 35, 2)
        assert wait_until(lambda: again == [35, 36], 15, step=0.05), again
    finally:
        stop2.set()
        w2.thread.join(10)
    store.close()


def test_the_python_api_gets_every_field_and_the_metadata(tmp_path: Path) -> None:
    store = HubStore(str(tmp_path / "r.sqlite"))
    seen: list[tuple] = []
    store.cursor("python-0")
    stop = threading.Event()
    w = SinkWorker(store, CallbackSink(lambda d, f, m: seen.append((d, f, m)), "python-0")).start(stop)
    try:
        store.deliver("sensor-7", 3, 0, cbor2.dumps({"t_cC": 2150, "ok": True, "note": "hi"}), 0)
        store.deliver("sensor-7", 3, 1, b"\x00\xffraw", 0)
        assert wait_until(lambda: len(seen) == 2, 15, step=0.05)
    finally:
        stop.set()
        w.thread.join(10)
    (d0, f0, m0), (_, f1, _) = seen
    assert d0 == "sensor-7" and f0 == {"t_cC": 2150, "ok": True, "note": "hi"}
    assert m0["seq"] == 0 and m0["boot"] == 3 and m0["ts"] > 0
    assert f1 == {"payload": "00ff726177"}  # not a CBOR map: hex, never just a size
    store.close()

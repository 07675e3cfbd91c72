"""The gateway's durable store-and-forward queue (gateway/queue.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.queue import DurableQueue

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A settable clock (seconds), so age limits are tested without sleeping."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _collect(q: DurableQueue, dests: list[str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    q.drain(dests, lambda d, p: out.append((d, p)))
    return out


def test_envelopes_are_delivered_in_arrival_order_per_device(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite") as q:
        for i in range(200):
            q.put("dev-a" if i % 3 else "dev-b", b"env %d" % i)
        assert q.depths() == {"dev-a": 133, "dev-b": 67}
        got = _collect(q, ["dev-a", "dev-b"])
        assert [p for d, p in got if d == "dev-a"] == [b"env %d" % i for i in range(200) if i % 3]
        assert [p for d, p in got if d == "dev-b"] == [b"env %d" % i for i in range(0, 200, 3)]
        assert q.depth() == 0
        assert q.counters()["delivered"] == 200


def test_queue_survives_a_restart_with_its_counters(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with DurableQueue(path, max_per_device=3) as q:
        for i in range(5):
            q.put("dev", b"%d" % i)
    with DurableQueue(path, max_per_device=3) as q:
        assert q.depth("dev") == 3
        assert q.counters() == {
            "enqueued": 5, "delivered": 0, "dropped_full": 2, "dropped_expired": 0,
            "rejected": 0,
        }
        q.put("dev", b"5")
        assert _collect(q, ["dev"]) == [("dev", b"3"), ("dev", b"4"), ("dev", b"5")]


def test_envelopes_committed_before_a_kill_survive(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[2]);"
        "from gateway.queue import DurableQueue;"
        "q = DurableQueue(sys.argv[1]);"
        "[q.put('dev', b'%d' % i) for i in range(50)];"
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(REPO)], timeout=60)
    assert proc.returncode == -9
    with DurableQueue(path) as q:
        assert [p for _, p in _collect(q, ["dev"])] == [b"%d" % i for i in range(50)]


def test_full_queue_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite", max_per_device=10) as q:
        for i in range(25):
            q.put("chatty", b"%d" % i)
        q.put("quiet", b"only")
        assert q.depth("chatty") == 10 and q.depth("quiet") == 1
        assert q.counters()["dropped_full"] == 15
        assert [p for _, p in _collect(q, ["chatty"])] == [b"%d" % i for i in range(15, 25)]
        assert _collect(q, ["quiet"]) == [("quiet", b"only")]


def test_envelopes_older_than_max_age_expire_and_are_counted(tmp_path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "q.sqlite", max_age_s=60, clock=clock) as q:
        q.put("dev", b"old-1")
        q.put("dev", b"old-2")
        clock.t += 30
        q.put("dev", b"middle")
        clock.t += 31  # old-* are now 61 s old, middle 31 s
        q.put("dev", b"new")
        assert q.counters()["dropped_expired"] == 2
        clock.t += 40  # middle is 71 s old at drain time
        assert _collect(q, ["dev"]) == [("dev", b"new")]
        assert q.counters()["dropped_expired"] == 3


def test_a_failing_send_keeps_the_rest_queued_in_order(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite") as q:
        for i in range(100):
            q.put("dev", b"%d" % i)
        sent: list[bytes] = []

        def flaky(dest: str, payload: bytes) -> None:
            if len(sent) == 70:
                raise OSError("link went down")
            sent.append(payload)

        with pytest.raises(OSError):
            q.drain(["dev"], flaky)
        assert q.depth("dev") == 30
        rest = _collect(q, ["dev"])
        assert sent + [p for _, p in rest] == [b"%d" % i for i in range(100)]


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DurableQueue(tmp_path / "a.sqlite", max_per_device=0)
    with pytest.raises(ValueError):
        DurableQueue(tmp_path / "b.sqlite", max_age_s=0)
    with pytest.raises(ValueError):
        DurableQueue(tmp_path / "c.sqlite", synchronous="OFF")


# ("put", "a3") puts three envelopes for "a": bursts reach the count limit.
_put = st.tuples(st.just("put"), st.sampled_from("abc").flatmap(
    lambda d: st.integers(1, 8).map(lambda k: f"{d}{k}")))
_ops = st.lists(
    st.one_of(
        _put,
        _put,
        st.tuples(st.just("drain"), st.integers(0, 12)),  # fail after k sends
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("age"), st.integers(1, 40)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
@example([("put", "a7"), ("drain", 3), ("age", 40), ("put", "b1"), ("age", 70),
          ("restart", 0), ("drain", 12)])
def test_queue_matches_a_bounded_fifo_model(tmp_path_factory, ops) -> None:
    """Whatever the interleaving of puts, partial drains, restarts and time
    passing, the queue behaves like per-device FIFOs that keep the newest
    ``max_per_device`` envelopes younger than ``max_age_s``."""
    path = tmp_path_factory.mktemp("q") / "q.sqlite"
    clock = FakeClock()
    limits = {"max_per_device": 5, "max_age_s": 100.0, "clock": clock}
    model: dict[str, list[tuple[float, bytes]]] = {"a": [], "b": [], "c": []}
    delivered: list[tuple[str, bytes]] = []
    expected: list[tuple[str, bytes]] = []
    seq = 0
    q = DurableQueue(path, **limits)
    try:
        for op, arg in ops:
            if op in ("put", "drain"):  # the queue expires when it is written
                for d in model:
                    model[d] = [(t, p) for t, p in model[d] if t >= clock.t - 100.0]
            if op == "put":
                dest, k = arg[0], int(arg[1:])
                for _ in range(k):
                    seq += 1
                    payload = b"%s%d" % (dest.encode(), seq)
                    q.put(dest, payload)
                    model[dest] = (model[dest] + [(clock.t, payload)])[-5:]
            elif op == "drain":
                sent = 0

                def send(dest: str, payload: bytes) -> None:
                    nonlocal sent
                    if sent == arg:
                        raise OSError("link down")
                    sent += 1
                    delivered.append((dest, payload))

                try:
                    q.drain(["a", "b", "c"], send)
                except OSError:
                    pass
                for d in ("a", "b", "c"):
                    take = min(arg, len(model[d]))
                    expected.extend((d, p) for _, p in model[d][:take])
                    model[d] = model[d][take:]
                    arg -= take
                    if arg == 0:
                        break
            elif op == "restart":
                q.close()
                q = DurableQueue(path, **limits)
            else:
                clock.t += arg
            assert q.depths() == {d: len(v) for d, v in model.items() if v}
        assert delivered == expected
    finally:
        q.close()

"""Store-and-forward under a flood: the durable queue's global and
per-source bounds, where junk from one source never evicts another source's
envelope, and the relay's routing policy, which keeps devices from
addressing anything but a peer (gateway/queue.py, gateway/relay.py)."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from gateway.config import parse_config
from gateway.queue import DurableQueue
from gateway.relay import POLICY, RateLimiter, Relay, RoutePolicy, RouteTable


def data_env(src: str, dst: str, nonce: int, ct: bytes = b"\x11" * 24) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 7, nonce, ct], canonical=True)


def _drain(q: DurableQueue, dests: list[str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    q.drain(dests, lambda d, p: out.append((d, p)))
    return out


# -- the queue -----------------------------------------------------------------

def test_junk_for_a_chosen_destination_never_evicts_the_peers_command(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite", synchronous="NORMAL") as q:
        assert q.put("mote-1", b"genuine command", src="hub")
        accepted = sum(q.put("mote-1", b"junk %d" % i, src="evil") for i in range(1000))
        # Past the destination's bound (1000) the junk displaces only itself.
        assert accepted == 1000 and q.depth("mote-1") == 1000
        assert not q.put("mote-1", b"one more", src="evil2")  # others' room is not free
        counters = q.counters()
        assert counters["rejected"] == 1 and counters["dropped_full"] == 1
        got = _drain(q, ["mote-1"])
        assert got[0] == ("mote-1", b"genuine command")
        assert got[1] == ("mote-1", b"junk 1") and len(got) == 1000


def test_a_source_over_its_own_bound_drops_only_its_own_oldest(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite", synchronous="NORMAL", max_per_source=5) as q:
        q.put("mote-1", b"genuine", src="hub")
        for i in range(8):
            assert q.put("mote-2", b"junk %d" % i, src="evil")
        assert q.sources() == {"hub": 1, "evil": 5}
        assert q.counters()["dropped_full"] == 3
        assert _drain(q, ["mote-1"]) == [("mote-1", b"genuine")]
        assert [p for _d, p in _drain(q, ["mote-2"])] == [b"junk %d" % i for i in range(3, 8)]


def test_thousands_of_made_up_destinations_are_bounded(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite", synchronous="NORMAL", max_dests=50) as q:
        assert q.put("mote-1", b"genuine", src="hub")
        accepted = sum(q.put(f"fake-{i}", b"x" * 100, src="evil") for i in range(5000))
        assert accepted == 49
        assert len(q.depths()) == 50
        assert q.counters()["rejected"] == 5000 - 49
        # The genuine destination still takes more.
        assert q.put("mote-1", b"genuine 2", src="hub")
        assert _drain(q, ["mote-1"]) == [("mote-1", b"genuine"), ("mote-1", b"genuine 2")]


def test_the_byte_bound_holds_and_is_paid_by_the_source_that_fills_it(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.sqlite", synchronous="NORMAL", max_bytes=10_000) as q:
        assert q.put("mote-1", b"g" * 1000, src="hub")
        for i in range(100):
            q.put("mote-2", bytes([i]) * 1000, src="evil")
        assert q.size_bytes() <= 10_000
        assert q.sources()["hub"] == 1 and q.sources()["evil"] == 9
        # A third source finds the room held by others: refused, nothing evicted.
        assert not q.put("mote-3", b"n" * 1000, src="other")
        assert q.sources() == {"hub": 1, "evil": 9}
        assert not q.put("mote-1", b"x" * 10_001, src="hub")  # larger than the whole queue


def test_a_queue_file_from_before_sources_were_recorded_still_opens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, dest TEXT NOT NULL,
                            enqueued REAL NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """)
    import time
    db.execute("INSERT INTO queue (dest, enqueued, payload) VALUES ('mote-1', ?, x'0102')",
               (time.time(),))
    db.commit()
    db.close()
    with DurableQueue(path) as q:
        assert q.size_bytes() == 2 and q.sources() == {"": 1}
        assert q.put("mote-1", b"new", src="hub")
        assert _drain(q, ["mote-1"]) == [("mote-1", b"\x01\x02"), ("mote-1", b"new")]


# -- the routing policy ------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def send(self, dst: str, envelope: bytes, done) -> None:
        self.got.append((dst, envelope))
        if done is not None:
            done()


def _relay(policy: RoutePolicy) -> tuple[Relay, Recorder, Recorder]:
    mqtt, serial = Recorder(), Recorder()
    relay = Relay(RouteTable({"mqtt": ["hub", "sensor-*"], "uart0": ["mote-*"]}),
                  RateLimiter(0, 1), {"mqtt": mqtt, "uart0": serial}, policy=policy)
    return relay, mqtt, serial


def test_a_device_may_address_only_its_peer_and_the_peer_only_devices() -> None:
    relay, mqtt, serial = _relay(RoutePolicy(["hub"]))
    # An MQTT account flooding made-up serial ids queues nothing.
    for i in range(5000):
        assert relay.handle(data_env("sensor-1", f"mote-{i}", i), "sensor-1", "mqtt") == POLICY
    assert relay.handle(data_env("sensor-1", "sensor-2", 1), "sensor-1", "mqtt") == POLICY
    assert relay.handle(data_env("hub", "hub", 1), "hub", "mqtt") == POLICY
    assert serial.got == [] and relay.stats.dropped[POLICY] == 5002
    assert relay.handle(data_env("sensor-1", "hub", 1), "sensor-1", "mqtt") is None
    assert relay.handle(data_env("hub", "mote-7", 2), "hub", "mqtt") is None
    assert relay.handle(data_env("hub", "sensor-1", 3), "hub", "mqtt") is None
    assert [d for d, _ in mqtt.got] == ["hub", "sensor-1"] and [d for d, _ in serial.got] == ["mote-7"]


def test_any_to_any_lifts_the_policy() -> None:
    relay, _mqtt, serial = _relay(RoutePolicy(["hub"], any_to_any=True))
    assert relay.handle(data_env("sensor-1", "mote-1", 1), "sensor-1", "mqtt") is None
    assert len(serial.got) == 1


def test_the_policy_is_configured_in_gateway_toml() -> None:
    cfg = parse_config({})
    assert cfg.peers == ["hub"] and cfg.any_to_any is False
    cfg = parse_config({"policy": {"peers": ["peer", "hub-*"], "any_to_any": True,
                                   "max_labelled": 10}})
    assert cfg.peers == ["peer", "hub-*"] and cfg.any_to_any and cfg.max_labelled == 10
    from gateway.config import ConfigError
    with pytest.raises(ConfigError, match=r"\[policy\] peer: unknown key"):
        parse_config({"policy": {"peer": ["hub"]}})
    with pytest.raises(ConfigError, match=r"\[policy\] peers"):
        parse_config({"policy": {"peers": "hub"}})


def test_the_gateway_applies_the_configured_policy(tmp_path: Path) -> None:
    from gateway.runner import Gateway

    cfg = parse_config({"policy": {"peers": ["peer"]}, "routes": {"mqtt": ["*"]}})
    gw = Gateway(cfg)
    assert gw.relay.policy.allows("sensor-1", "peer")
    assert not gw.relay.policy.allows("sensor-1", "hub")
    assert gw.relay.stats.max_labelled == cfg.max_labelled

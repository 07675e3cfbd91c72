"""A hostile or broken serial device on real ptys: rotating source ids buy
neither rate-limit buckets nor labels (each port carries a bounded set of
ids and has its own token bucket), and a device that stops reading holds up
no other link (gateway/serial_bridge.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cbor2
import pytest

import moteseal.links.serial_link as serial_link
from gateway.metrics import StatusCollector
from gateway.relay import (RATE_LIMITED, SRC_MISMATCH, RateLimiter, Relay, RoutePolicy,
                           RouteTable)
from gateway.serial_bridge import SerialBridge, SerialConfig
from tests.gateway.test_serial_bridge import RecordingLink as Recorder
from tests.gateway.test_serial_bridge import data_env
from tests.serial_fixtures import PlugPty, wait_for

pytestmark = pytest.mark.timeout(120)


class Port:
    """One pty and the bridge on it, attached to ``relay``."""

    def __init__(self, tmp: Path, relay: Relay, name: str, devices: tuple[str, ...],
                 **conf: object) -> None:
        self.pty = PlugPty(tmp / f"tty-{name}")
        self.pty.plug()
        config = SerialConfig(name, str(self.pty.path), 115200, devices,
                              str(tmp / f"{name}.sqlite"), **conf)  # type: ignore[arg-type]
        self.bridge = SerialBridge(config, relay, backoff_max=0.1)
        relay.add_link(name, self.bridge)
        self.bridge.start()
        assert self.bridge.link.wait_connected(10)
        self.pty.hello()
        assert self.bridge.link.wait_ready(10)

    def close(self) -> None:
        self.bridge.stop()
        self.pty.close()


def _status(relay: Relay, port: Port) -> dict:
    snap = relay.snapshot()
    return {**snap, "uptime_s": 1.0,
            "links": {"uart0": {"connected": True, "queue_depth": 0,
                                **port.bridge.status_extra()}}}


def test_rotating_source_ids_on_one_port_buy_no_labels_and_no_rate(tmp_path: Path) -> None:
    mqtt = Recorder()
    # Per-id buckets as generous as the default; the port's own is what binds.
    relay = Relay(RouteTable({"mqtt": ["hub"], "uart0": ["mote-*"]}), RateLimiter(20, 40),
                  {"mqtt": mqtt}, policy=RoutePolicy(["hub"]))
    port = Port(tmp_path, relay, "uart0", ("mote-*",), max_ids=16, rate=0.01, burst=300)
    try:
        total = 2000
        for i in range(total):
            port.pty.send_frame(data_env(f"mote-{i}", "hub", i))
        assert wait_for(lambda: port.bridge.link.stats()["frames_rx"] == total, timeout=60)
        assert wait_for(lambda: sum(relay.snapshot()["dropped"].values())
                        + len(mqtt.got) == total, timeout=30)
        # The first 16 ids are carried; every other id is the port itself.
        assert len(mqtt.got) == 16
        snap = relay.snapshot()
        assert sorted(snap["last_seen"]) == sorted(f"mote-{i}" for i in range(16))
        # Frames the port's bucket let through under a refused id count as
        # the port's own (src_mismatch, or the port name's bucket runs dry).
        assert snap["dropped"][SRC_MISMATCH] + snap["dropped"][RATE_LIMITED] == total - 16
        assert snap["dropped"][SRC_MISMATCH] > 0
        extra = port.bridge.status_extra()
        assert extra["port_rate_limited"] == total - 300 and extra["ids_refused"] == 300 - 16
        # Status file and Prometheus stay small: no label per made-up id.
        status = _status(relay, port)
        assert len(json.dumps(status)) < 4000
        from prometheus_client import CollectorRegistry, generate_latest
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(lambda: status))
        text = generate_latest(registry).decode()
        assert text.count("device_last_seen_timestamp_seconds{") == 16
    finally:
        port.close()


def test_a_port_rate_limit_holds_across_its_own_ids(tmp_path: Path) -> None:
    mqtt = Recorder()
    relay = Relay(RouteTable({"mqtt": ["hub"], "uart0": ["m-1", "m-2", "m-3"]}),
                  RateLimiter(0.01, 40), {"mqtt": mqtt}, policy=RoutePolicy(["hub"]))
    port = Port(tmp_path, relay, "uart0", ("m-1", "m-2", "m-3"), rate=0.01, burst=50)
    try:
        for i in range(300):
            port.pty.send_frame(data_env(f"m-{i % 3 + 1}", "hub", i))
        assert wait_for(lambda: port.bridge.link.stats()["frames_rx"] == 300, timeout=30)
        assert wait_for(lambda: relay.snapshot()["dropped"][RATE_LIMITED] == 250)
        assert len(mqtt.got) == 50  # three ids' buckets (120) would have let more through
    finally:
        port.close()


def test_the_last_seen_table_is_bounded() -> None:
    mqtt = Recorder()
    relay = Relay(RouteTable({"mqtt": ["*"]}), RateLimiter(0, 1), {"mqtt": mqtt})
    relay.stats.max_labelled = 100
    for i in range(20_001):
        relay.handle(data_env(f"s-{i}", "hub", i), f"s-{i}", "mqtt")
    snap = relay.snapshot()
    assert len(snap["last_seen"]) == 100 and snap["unlabelled"] == 20_001 - 100
    assert snap["relayed"] == 20_001


def test_a_serial_device_that_stops_reading_holds_up_no_other_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A write to the stalled port blocks for up to this long; before the fix
    # that was the relay's caller (the MQTT thread) waiting.
    monkeypatch.setattr(serial_link, "WRITE_TIMEOUT_S", 30.0)
    mqtt = Recorder()
    relay = Relay(RouteTable({"mqtt": ["hub"], "uartA": ["a-1"], "uartB": ["b-1"]}),
                  RateLimiter(0, 1), {"mqtt": mqtt}, policy=RoutePolicy(["hub"]))
    stalled = Port(tmp_path, relay, "uartA", ("a-1",))
    healthy = Port(tmp_path, relay, "uartB", ("b-1",))
    try:
        n = 60  # 60 kB for the stalled port: well past a pty's ~22 kB buffer
        done_a: list[int] = []
        done_b: list[int] = []

        def mqtt_thread() -> None:
            for i in range(n):
                relay.handle(data_env("hub", "a-1", i, b"\xaa" * 1000), "hub", "mqtt",
                             lambda: done_a.append(1))
                relay.handle(data_env("hub", "b-1", i), "hub", "mqtt",
                             lambda: done_b.append(1))

        sender = threading.Thread(target=mqtt_thread, daemon=True)
        sender.start()
        got_b = healthy.pty.read_frames(n, timeout=20)
        assert got_b == [data_env("hub", "b-1", i) for i in range(n)]
        sender.join(20)
        assert not sender.is_alive()
        # Every envelope for the stalled port is written or on disk: the MQTT
        # side may acknowledge it, so its in-flight window is not held.
        assert wait_for(lambda: len(done_a) == n and len(done_b) == n, timeout=20)
        assert stalled.bridge.queue_depth() > 0
        # The device reads again: everything arrives, in order (a write under
        # way when the outbox moved to disk may come twice).
        nonces: list[int] = []
        for _ in range(10):  # a few rounds: copies make more than n frames
            nonces += [cbor2.loads(f)[4] for f in stalled.pty.read_frames(n, timeout=10)]
            if set(nonces) >= set(range(n)):
                break
        deduped = [x for j, x in enumerate(nonces) if j == 0 or x != nonces[j - 1]]
        assert deduped == list(range(n))
    finally:
        stalled.close()
        healthy.close()

"""The gateway's serial bridge (gateway/serial_bridge.py) on real ptys, with
the real relay and the durable queue; the MQTT side here is a recording
link (the end-to-end test through Mosquitto is tests/e2e/test_serial_e2e.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from gateway.queue import DurableQueue
from gateway.relay import RateLimiter, Relay, RouteTable
from gateway.serial_bridge import SerialBridge, SerialConfig, open_links, parse_serial_config
from tests.serial_fixtures import PlugPty, wait_for

pytestmark = pytest.mark.timeout(90)


def data_env(src: str, dst: str, nonce: int, ct: bytes = b"\x11" * 24) -> bytes:
    """A canonical v1 data envelope (docs/protocol.md): [6, src, dst, sid, nonce, ct]."""
    return cbor2.dumps([6, src.encode(), dst.encode(), 7, nonce, ct], canonical=True)


class RecordingLink:
    """Stands in for the MQTT link: records what the relay forwards to it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def send(self, dst: str, envelope: bytes, done) -> None:
        with self.lock:
            self.got.append((dst, envelope))
        if done is not None:
            done()


class Rig:
    def __init__(self, tmp: Path, pty: PlugPty, rate: float = 0) -> None:
        self.tmp = tmp
        self.pty = pty
        self.mqtt = RecordingLink()
        conf = SerialConfig("uart0", str(pty.path), 115200, ("sensor-1", "sensor-2"),
                            str(tmp / "q.sqlite"))
        self.conf = conf
        routes = {"mqtt": ["peer*"], **{conf.name: list(conf.devices)}}
        self.relay = Relay(RouteTable(routes), RateLimiter(rate, 5), {"mqtt": self.mqtt})
        self.queue = DurableQueue(tmp / "q.sqlite")
        self.bridge = self._bridge()

    def _bridge(self) -> SerialBridge:
        b = SerialBridge(self.conf, self.relay, self.queue, backoff_max=0.1)
        self.relay.add_link(self.conf.name, b)
        return b.start()

    def restart(self) -> None:
        """Stop the bridge and its queue, then start both again from disk."""
        self.bridge.close()
        self.queue.close()
        self.queue = DurableQueue(self.tmp / "q.sqlite")
        self.bridge = self._bridge()

    def from_peer(self, dst: str, nonce: int) -> tuple[str | None, list[int]]:
        done: list[int] = []
        reason = self.relay.handle(data_env("peer", dst, nonce), "peer", "mqtt",
                                   lambda: done.append(1))
        return reason, done

    def close(self) -> None:
        self.bridge.close()
        self.queue.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    pty = PlugPty(tmp_path / "ttyUSB0")
    pty.plug()
    r = Rig(tmp_path, pty)
    try:
        assert r.bridge.link.wait_connected(10)
        pty.hello()  # the device is listening
        assert r.bridge.link.wait_ready(10)
        yield r
    finally:
        r.close()
        pty.close()


def test_telemetry_from_a_serial_device_reaches_the_mqtt_link(rig: Rig) -> None:
    for i in range(20):
        rig.pty.send_frame(data_env("sensor-1" if i % 2 else "sensor-2", "peer", i))
    assert wait_for(lambda: len(rig.mqtt.got) == 20)
    assert rig.mqtt.got == [
        ("peer", data_env("sensor-1" if i % 2 else "sensor-2", "peer", i)) for i in range(20)
    ]
    assert rig.relay.stats.relayed == {"mqtt": 20}


def test_bad_envelopes_from_the_port_are_dropped_with_the_relays_reasons(rig: Rig) -> None:
    rig.pty.send_frame(b"\x86not cbor")  # malformed
    rig.pty.send_frame(data_env("sensor-9", "peer", 1))  # not attached to this port
    rig.pty.send_frame(data_env("sensor-1", "nobody", 2))  # no route
    rig.pty.send_frame(cbor2.dumps([10, b"sensor-1", b"peer", 1, b""], canonical=True))
    rig.pty.write(b"\x05\x01\x02\x00")  # a broken frame: the link's count
    rig.pty.send_frame(data_env("sensor-1", "peer", 3))  # still delivered
    assert wait_for(lambda: len(rig.mqtt.got) == 1)
    dropped = rig.relay.stats.dropped
    assert wait_for(lambda: sum(dropped.values()) == 4)
    assert dropped["malformed"] == 1
    assert dropped["src_mismatch"] == 1
    assert dropped["unknown_destination"] == 1
    assert dropped["unknown_version"] == 1
    assert rig.bridge.stats()["drops"]["cobs"] == 1
    assert rig.mqtt.got == [("peer", data_env("sensor-1", "peer", 3))]


def test_rate_limit_applies_to_serial_devices_too(tmp_path: Path) -> None:
    pty = PlugPty(tmp_path / "ttyUSB0")
    pty.plug()
    r = Rig(tmp_path, pty, rate=0.001)  # burst of 5, then nearly nothing
    try:
        assert r.bridge.link.wait_connected(10)
        for i in range(12):
            pty.send_frame(data_env("sensor-1", "peer", i))
        assert wait_for(lambda: r.relay.stats.dropped["rate_limited"] == 7)
        assert len(r.mqtt.got) == 5
    finally:
        r.close()
        pty.close()


def test_replies_from_mqtt_are_written_to_the_port(rig: Rig) -> None:
    dones = []
    for i in range(10):
        reason, done = rig.from_peer("sensor-2", i)
        assert reason is None
        dones.append(done)
    assert rig.pty.read_frames(10) == [data_env("peer", "sensor-2", i) for i in range(10)]
    # ``done`` runs once each envelope is written (on the port's worker thread).
    assert wait_for(lambda: all(d == [1] for d in dones))
    assert rig.bridge.written == 10 and rig.queue.depth() == 0


def test_cable_pulled_queues_then_replug_delivers_in_order(rig: Rig) -> None:
    rig.from_peer("sensor-1", 0)
    assert rig.pty.read_frames(1) == [data_env("peer", "sensor-1", 0)]
    rig.pty.unplug()
    assert wait_for(lambda: not rig.bridge.link.connected)
    for i in range(1, 31):
        reason, done = rig.from_peer("sensor-1", i)
        # Taken responsibility for: on disk, so the MQTT side may ack.
        assert reason is None and done == [1]
    assert rig.queue.depth("sensor-1") == 30
    rig.pty.plug()
    assert rig.bridge.link.wait_connected(10)
    rig.pty.hello()
    # Sent while the queue drains: must come after the queued ones.
    for i in range(31, 41):
        rig.from_peer("sensor-1", i)
    assert rig.pty.read_frames(40, timeout=20) == [
        data_env("peer", "sensor-1", i) for i in range(1, 41)
    ]
    assert wait_for(lambda: rig.queue.depth() == 0)
    assert rig.queue.counters()["delivered"] >= 30


def test_nothing_is_written_before_the_device_is_heard(rig: Rig) -> None:
    # Re-plugged, the port opens at once, but a device that has not spoken
    # may not be listening yet: bytes written now could be flushed unread.
    rig.pty.unplug()
    assert wait_for(lambda: not rig.bridge.link.connected)
    rig.pty.plug()
    assert rig.bridge.link.wait_connected(10)
    for i in range(5):
        rig.from_peer("sensor-1", i)
    assert rig.pty.read_frames(1, timeout=0.5) == []
    assert rig.pty.hellos == 1  # the gateway greeted the port when it opened
    assert rig.queue.depth("sensor-1") == 5 and not rig.bridge.link.peer_ready
    rig.pty.send_frame(data_env("sensor-1", "peer", 100))  # any frame will do
    assert rig.pty.read_frames(5) == [data_env("peer", "sensor-1", i) for i in range(5)]
    assert wait_for(lambda: rig.mqtt.got == [("peer", data_env("sensor-1", "peer", 100))])


def test_queue_survives_a_gateway_restart_while_the_cable_is_out(rig: Rig) -> None:
    rig.pty.unplug()
    assert wait_for(lambda: not rig.bridge.link.connected)
    for i in range(15):
        rig.from_peer("sensor-2" if i % 3 else "sensor-1", i)
    rig.restart()
    assert rig.queue.depth() == 15
    rig.pty.plug()
    assert rig.bridge.link.wait_connected(10)
    rig.pty.hello()
    frames = rig.pty.read_frames(15, timeout=20)
    assert sorted(frames) == sorted(
        data_env("peer", "sensor-2" if i % 3 else "sensor-1", i) for i in range(15)
    )
    for dev in ("sensor-1", "sensor-2"):
        mine = [f for f in frames if cbor2.loads(f)[2] == dev.encode()]
        assert mine == [data_env("peer", dev, i) for i in range(15)
                        if ("sensor-2" if i % 3 else "sensor-1") == dev]
    assert wait_for(lambda: rig.queue.depth() == 0)


def test_serial_config_tables_are_parsed_and_checked(tmp_path: Path) -> None:
    tables = [
        {"name": "uart0", "port": "/dev/ttyUSB0", "devices": ["sensor-1", "sensor-2"]},
        {"port": "rfc2217://10.0.0.5:4000", "baudrate": 9600, "devices": ["pump-*"],
         "queue": "/var/lib/moteseal/pumps.sqlite", "queue_max": 50, "queue_max_age_s": 3600},
    ]
    assert parse_serial_config(tables, tmp_path) == [
        SerialConfig("uart0", "/dev/ttyUSB0", 115200, ("sensor-1", "sensor-2"),
                     str(tmp_path / "uart0-queue.sqlite")),
        SerialConfig("serial1", "rfc2217://10.0.0.5:4000", 9600, ("pump-*",),
                     "/var/lib/moteseal/pumps.sqlite", 50, 3600.0),
    ]
    for bad in (
        [{"port": "/dev/x"}],
        [{"port": "/dev/x", "devices": []}],
        [{"devices": ["a"]}],
        [{"port": "/dev/x", "devices": ["a"], "baud": 9600}],
        [{"port": "/dev/x", "devices": ["a"], "baudrate": "fast"}],
        [{"port": "/dev/x", "devices": ["a"], "queue_max": 0}],
        [{"port": "/a", "devices": ["a"], "name": "x"}, {"port": "/b", "devices": ["b"], "name": "x"}],
        {"port": "/dev/x"},
    ):
        with pytest.raises(ValueError):
            parse_serial_config(bad)


def test_open_links_is_the_runners_hook(tmp_path: Path) -> None:
    pty = PlugPty(tmp_path / "ttyS1")
    pty.plug()
    specs = [{"name": "uart0", "port": str(pty.path), "devices": ["sensor-1"],
              "config_dir": str(tmp_path)}]
    mqtt = RecordingLink()
    relay = Relay(RouteTable({"mqtt": ["*"], "uart0": ["sensor-1"]}), RateLimiter(0, 1),
                  {"mqtt": mqtt})
    links = open_links(specs, relay)
    try:
        assert [x.name for x in links] == ["uart0"]
        relay.add_link("uart0", links[0])
        links[0].start()
        assert wait_for(lambda: links[0].connected)
        pty.hello()
        pty.send_frame(data_env("sensor-1", "peer", 1))
        assert wait_for(lambda: mqtt.got == [("peer", data_env("sensor-1", "peer", 1))])
        relay.handle(data_env("peer", "sensor-1", 2), "peer", "mqtt")
        assert pty.read_frames(1) == [data_env("peer", "sensor-1", 2)]
        assert links[0].queue_depth() == 0
        assert (tmp_path / "uart0-queue.sqlite").exists()
    finally:
        for x in links:
            x.stop()
        pty.close()
    with pytest.raises(ValueError):
        open_links([{"name": "bad", "devices": ["a"]}], relay)


def test_frame_and_queue_drops_reach_the_status_and_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.metrics import StatusCollector

    pty = PlugPty(tmp_path / "ttyUSB0")
    pty.plug()
    mqtt = RecordingLink()
    conf = SerialConfig("uart0", str(pty.path), 115200, ("sensor-1",),
                        str(tmp_path / "q.sqlite"), queue_max=2)
    relay = Relay(RouteTable({"mqtt": ["*"], "uart0": ["sensor-1"]}), RateLimiter(0, 1),
                  {"mqtt": mqtt})
    bridge = SerialBridge(conf, relay, backoff_max=0.1)
    relay.add_link("uart0", bridge)
    bridge.start()
    try:
        assert bridge.link.wait_connected(10)
        pty.write(b"\x00\x05\x01\x02\x00")  # cobs
        for i in range(3):  # the device is silent: all three queue, one is dropped
            relay.handle(data_env("peer", "sensor-1", i), "peer", "mqtt")
        assert wait_for(lambda: bridge.status_extra()["frame_drops"]["cobs"] == 1)
        extra = bridge.status_extra()
        assert extra["queue_dropped"] == {"full": 1, "expired": 0, "rejected": 0}
        assert bridge.queue_depth() == 2 and extra["peer_ready"] is False

        status = {"relayed_by_link": {}, "dropped": {}, "last_seen": {}, "uptime_s": 1.0,
                  "links": {"uart0": {"connected": bridge.connected,
                                      "queue_depth": bridge.queue_depth(), **extra}}}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(lambda: status))
        text = generate_latest(registry).decode()
        assert 'moteseal_gateway_serial_frames_dropped_total{link="uart0",reason="cobs"} 1.0' in text
        assert 'moteseal_gateway_serial_queue_dropped_total{link="uart0",reason="full"} 1.0' in text
        assert 'moteseal_gateway_queue_depth{link="uart0"} 2.0' in text
    finally:
        bridge.stop()
        pty.close()
    # The runner writes a final status after stopping its links.
    assert bridge.queue_depth() == 2
    assert bridge.status_extra()["queue_dropped"]["full"] == 1


def test_an_envelope_too_large_for_a_frame_is_a_link_error_not_a_stuck_queue(
    tmp_path: Path,
) -> None:
    # A gateway configured for envelopes larger than a serial frame holds.
    pty = PlugPty(tmp_path / "ttyUSB0")
    pty.plug()
    mqtt = RecordingLink()
    conf = SerialConfig("uart0", str(pty.path), 115200, ("sensor-1",), str(tmp_path / "q.sqlite"))
    relay = Relay(RouteTable({"mqtt": ["*"], "uart0": ["sensor-1"]}), RateLimiter(0, 1),
                  {"mqtt": mqtt}, max_envelope_bytes=4000)
    bridge = SerialBridge(conf, relay, backoff_max=0.1)
    relay.add_link("uart0", bridge)
    bridge.start()
    try:
        assert bridge.link.wait_connected(10)
        big = cbor2.dumps([6, b"peer", b"sensor-1", 7, 1, b"\x11" * 1300], canonical=True)
        done: list[int] = []
        assert relay.handle(big, "peer", "mqtt", lambda: done.append(1)) == "link_error"
        assert done == [1] and bridge.queue_depth() == 0
        relay.handle(data_env("peer", "sensor-1", 2), "peer", "mqtt")  # queued: not heard yet
        pty.hello()
        assert pty.read_frames(1) == [data_env("peer", "sensor-1", 2)]
    finally:
        bridge.stop()
        pty.close()

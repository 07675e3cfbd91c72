"""A serial device and an MQTT peer talking through real Mosquitto and a real
``moteseal gateway run`` process, with the cable pulled and the gateway
restarted in between.

The serial device is the far end of a pty (tests/serial_fixtures.PlugPty):
it frames envelopes exactly as a microcontroller's UART would. Envelopes
are opaque to the gateway; these are well-formed v1 data envelopes with
arbitrary ciphertext (the end-to-end session over this path is tested in
the session layer's own tests).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cbor2
import pytest

from device.framing import encode
from tests.serial_fixtures import PlugPty, SocatPair, wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(180)]

DOWN = "moteseal/v1/down/"
UP = "moteseal/v1/up/"


def data_env(src: str, dst: str, nonce: int) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 9, nonce, b"\xc7" * 40], canonical=True)


def _serial_gateway(broker, gateway_process, pty: PlugPty, tmp_path: Path, **kw):
    gp = gateway_process(broker, start=False, routes={"mqtt": ["peer"]}, peers=["peer"], **kw)
    with open(gp.config, "a") as f:
        f.write(f"""
[[serial]]
name = "uart0"
port = "{pty.path}"
baudrate = 115200
devices = ["mote-1", "mote-2"]
queue = "uart0-queue.sqlite"
queue_max = 100
""")
    return gp.start()


def _link(gp) -> dict:
    s = gp.status()
    return s["links"]["uart0"] if s and "uart0" in s.get("links", {}) else {}


@pytest.fixture
def pty(tmp_path: Path):
    p = PlugPty(tmp_path / "ttyUSB0")
    p.plug()
    try:
        yield p
    finally:
        p.close()



def first_copies(pty: PlugPty, count: int, timeout: float) -> list[bytes]:
    """The first copy of each frame read, in arrival order, until ``count``
    distinct frames arrived or ``timeout`` passed."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        for f in pty.read_frames(count - len(seen), timeout=max(0.1, deadline - time.monotonic())):
            if f not in seen:
                seen.append(f)
    return seen

def test_serial_telemetry_reaches_the_mqtt_peer_and_replies_come_back(
    mosquitto, mqtt_client, gateway_process, pty: PlugPty, tmp_path: Path
) -> None:
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "peer": "device"})
    gp = _serial_gateway(broker, gateway_process, pty, tmp_path)
    assert wait_for(lambda: _link(gp).get("connected"), timeout=15)
    pty.hello()
    # A relative queue path is taken from the config file's directory.
    assert (gp.config.parent / "uart0-queue.sqlite").exists()
    peer = mqtt_client(broker, user="peer")
    assert peer.subscribe(DOWN + "peer") == [1]

    # device -> gateway -> Mosquitto -> peer, with line noise in between
    for i in range(20):
        pty.write(b"\x13\x37" * (i % 3))
        pty.send_frame(data_env("mote-1" if i % 2 else "mote-2", "peer", i))
    got = peer.collect(20, timeout=20)
    assert got == [(DOWN + "peer", data_env("mote-1" if i % 2 else "mote-2", "peer", i))
                   for i in range(20)]

    # peer -> Mosquitto -> gateway -> device
    for i in range(20):
        assert peer.publish(UP + "peer", data_env("peer", "mote-2", 100 + i)) == 0
    # QoS 1 is at least once: a redelivery may repeat an envelope (gateway/mqtt.py,
    # its guarantees; the device's replay window discards it). Each arrives, in order.
    assert first_copies(pty, 20, timeout=20) == [data_env("peer", "mote-2", 100 + i)
                                                 for i in range(20)]

    # Same validation and counts as MQTT: a forged source on the port, and a
    # corrupted frame (the link's count, never reaching the relay).
    pty.send_frame(data_env("peer", "mote-1", 1))  # "peer" is not on this port
    frame = bytearray(encode(data_env("mote-1", "peer", 999)))
    frame[10] ^= 0x40
    pty.write(bytes(frame))
    pty.send_frame(data_env("mote-1", "peer", 21))
    assert peer.collect(1, timeout=10) == [(DOWN + "peer", data_env("mote-1", "peer", 21))]
    assert wait_for(lambda: (gp.status() or {}).get("dropped", {}).get("src_mismatch") == 1)
    assert wait_for(lambda: _link(gp).get("frame_drops", {}).get("crc") == 1)
    assert peer.quiet(0.5) == []


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_cable_pulled_and_gateway_restarted_delivers_the_queue(
    mosquitto, mqtt_client, gateway_process, pty: PlugPty, tmp_path: Path, how: str
) -> None:
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "peer": "device"})
    gp = _serial_gateway(broker, gateway_process, pty, tmp_path)
    assert wait_for(lambda: _link(gp).get("connected"), timeout=15)
    peer = mqtt_client(broker, user="peer")

    pty.unplug()  # the cable is pulled
    assert wait_for(lambda: _link(gp).get("connected") is False, timeout=15)
    for i in range(30):
        assert peer.publish(UP + "peer", data_env("peer", "mote-1", i)) == 0
    if how == "terminate":
        # Everything is on disk before the orderly stop.
        assert wait_for(lambda: _link(gp).get("queue_depth") == 30, timeout=20)
        gp.stop()
    else:
        # SIGKILL at once: what the gateway had not yet put on disk is
        # still unacknowledged at the broker, which re-delivers it.
        gp.kill()
    gp.start()
    assert _link(gp).get("connected") is False

    pty.plug()  # and back in; the device says hello once the port is open
    assert wait_for(lambda: _link(gp).get("connected"), timeout=15)
    pty.hello()
    # Re-delivery after a kill may repeat an envelope (the device's replay
    # window discards it); none is lost and the order holds.
    frames = pty.read_frames(30, timeout=30)
    while len(set(frames)) < 30:
        more = pty.read_frames(1, timeout=10)
        if not more:
            break
        frames += more
    unique = list(dict.fromkeys(frames))
    assert unique == [data_env("peer", "mote-1", i) for i in range(30)]
    assert wait_for(lambda: _link(gp).get("queue_depth") == 0, timeout=15)
    # And the live path works again after the backlog.
    assert peer.publish(UP + "peer", data_env("peer", "mote-1", 30)) == 0
    assert pty.read_frames(1, timeout=10)[-1:] == [data_env("peer", "mote-1", 30)]


@pytest.mark.skipif(not SocatPair.available(), reason="socat not installed")
def test_noise_session_between_a_serial_device_and_an_mqtt_peer(
    mosquitto, mqtt_client, gateway_process, tmp_path: Path
) -> None:
    """A CPython device on ``moteseal.links.serial_link`` (one end of a socat pty
    pair; the gateway holds the other) runs a real NKpsk0 session with a
    peer on MQTT: 0-RTT telemetry, transport messages both ways, then the
    cable is pulled and the gateway SIGKILLed while the peer keeps sending;
    everything decrypts at the device, in order, once it is back."""
    from moteseal import NaclBackend
    from device.counter import Msg1Counter, NonpersistingCounterStore
    from moteseal.links.serial_link import SerialLink
    from device.session import EV_DATA, EV_HANDSHAKE, DeviceSession
    from device.peer import NonpersistingDirectory, PeerSessions

    backend = NaclBackend()
    priv, pub = backend.generate_keypair()
    psk = backend.random_bytes(32)
    directory = NonpersistingDirectory([(priv, pub)])
    directory.add(b"mote-1", psk)
    peer_sessions = PeerSessions(backend, b"peer", directory)
    device = DeviceSession(backend, b"mote-1", b"peer", pub, psk,
                           Msg1Counter(NonpersistingCounterStore()))

    broker = mosquitto(auth=True, accounts={"gw": "gateway", "peer": "device"})
    cable = SocatPair(tmp_path / "gw-tty", tmp_path / "mote-tty")
    cable.start()
    gp = gateway_process(broker, start=False, routes={"mqtt": ["peer"]}, peers=["peer"])
    with open(gp.config, "a") as f:
        f.write(f'\n[[serial]]\nname = "uart0"\nport = "{cable.a}"\n'
                f'devices = ["mote-1"]\nqueue = "{tmp_path / "q.sqlite"}"\n')
    gp.start()
    peer = mqtt_client(broker, user="peer")
    assert peer.subscribe(DOWN + "peer") == [1]
    events: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def on_frame(env: bytes) -> None:
        with lock:
            events.append(device.receive(env))

    link = SerialLink(str(cable.b), on_frame=on_frame, answer_hello=True,
                      backoff_max=0.2).start()
    try:
        assert link.wait_connected(10)
        assert wait_for(lambda: _link(gp).get("connected"), timeout=15)

        # 0-RTT telemetry in message 1; message 2 back over MQTT and serial.
        link.send(device.handshake(b"t=21.5C"))
        [(_, hs1)] = peer.collect(1, timeout=15)
        got = peer_sessions.receive(hs1)
        assert (got.kind, got.payload) == ("hs1", b"t=21.5C")
        assert peer.publish(UP + "peer", got.reply) == 0
        assert wait_for(lambda: events == [(EV_HANDSHAKE, b"")], timeout=15)

        # Transport messages both ways.
        for i in range(5):
            link.send(device.send(b"t=%d" % i))
        readings = [peer_sessions.receive(env).payload for _, env in peer.collect(5, 15)]
        assert readings == [b"t=%d" % i for i in range(5)]
        assert peer.publish(UP + "peer", peer_sessions.send(b"mote-1", b"interval=60")) == 0
        assert wait_for(lambda: len(events) == 2, timeout=15)
        assert events[1] == (EV_DATA, b"interval=60")

        # Cable pulled; the peer keeps sending; the gateway is killed and
        # restarted; the cable comes back: every command decrypts, in order.
        cable.stop()
        assert wait_for(lambda: _link(gp).get("connected") is False, timeout=15)
        for i in range(10):
            cmd = peer_sessions.send(b"mote-1", b"cmd %d" % i)
            assert peer.publish(UP + "peer", cmd) == 0
        assert wait_for(lambda: _link(gp).get("queue_depth") == 10, timeout=20)
        gp.kill()
        gp.start()
        cable.start()
        assert wait_for(lambda: len(events) == 12, timeout=30)
        assert events[2:] == [(EV_DATA, b"cmd %d" % i) for i in range(10)]
    finally:
        link.close()
        cable.stop()

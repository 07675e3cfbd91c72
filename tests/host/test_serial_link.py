"""The pyserial transport (moteseal/links/serial_link.py) on real pseudo-terminals,
loop:// and socket://, including a pulled and re-plugged cable."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.errors import MessageTooLarge
from device.framing import FRAME_PAYLOAD_MAX_BYTES, FrameDecoder, encode
from moteseal.links.serial_link import HELLO_ANSWER_INTERVAL_S, LinkDown, SerialLink
from tests.serial_fixtures import PlugPty, Rfc2217Server, SocatPair, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PlugPty]:
    p = PlugPty(tmp_path / "ttyUSB0")
    p.plug()
    try:
        yield p
    finally:
        p.close()


def test_loop_url_echoes_frames_back() -> None:
    with SerialLink("loop://", backoff_max=0.2) as link:
        assert link.wait_connected(5)
        for i in range(20):
            link.send(b"reading %d" % i)
        got = [link.recv(timeout=5) for _ in range(20)]
    assert got == [b"reading %d" % i for i in range(20)]


def test_pty_frames_both_ways_with_line_noise(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), 115200, backoff_max=0.2) as link:
        assert link.wait_connected(5)
        # device -> link: noise between frames costs nothing
        for i in range(50):
            pty.write(os.urandom(i % 17))
            pty.send_frame(b"up %d" % i)
        got = [link.recv(timeout=5) for _ in range(50)]
        assert got == [b"up %d" % i for i in range(50)]
        assert link.stats()["frames_rx"] == 50
        # link -> device
        for i in range(50):
            link.send(b"down %d" % i)
        assert pty.read_frames(50) == [b"down %d" % i for i in range(50)]


def test_corrupted_frames_from_the_pty_are_counted_not_delivered(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), backoff_max=0.2) as link:
        assert link.wait_connected(5)
        good = encode(b"good")
        bad = bytearray(encode(b"flipped"))
        bad[3] ^= 0x10
        pty.write(bytes(bad) + good + encode(b"x" * 300)[:-60] + good)
        assert [link.recv(timeout=5), link.recv(timeout=5)] == [b"good", b"good"]
        assert link.recv(timeout=0.2) is None
        drops = link.stats()["drops"]
        assert drops["crc"] == 1 and drops["cobs"] == 1 and sum(drops.values()) == 2


def test_concurrent_senders_never_interleave_frames(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), backoff_max=0.2) as link:
        assert link.wait_connected(5)
        reader_frames: list[bytes] = []
        reader = threading.Thread(target=lambda: reader_frames.extend(pty.read_frames(400, 30)))
        reader.start()

        def sender(t: int) -> None:
            for i in range(100):
                link.send(bytes([t + 1]) * 200 + b"%d" % i)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.join()
    assert len(reader_frames) == 400
    for t in range(4):
        mine = [f for f in reader_frames if f[0] == t + 1]
        assert mine == [bytes([t + 1]) * 200 + b"%d" % i for i in range(100)]
    assert pty.decoder.dropped() == 0


def test_oversized_payload_is_refused_before_writing(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), backoff_max=0.2) as link:
        assert link.wait_connected(5)
        with pytest.raises(MessageTooLarge):
            link.send(b"x" * (FRAME_PAYLOAD_MAX_BYTES + 1))
        link.send(b"after")
        assert pty.read_frames(1) == [b"after"]


def test_cable_pulled_and_replugged(pty: PlugPty) -> None:
    states: list[bool] = []
    frames: list[bytes] = []
    link = SerialLink(
        str(pty.path), on_frame=frames.append, on_state=states.append, backoff_max=0.2
    )
    with link:
        assert link.wait_connected(5)
        pty.send_frame(b"before")
        assert wait_for(lambda: frames == [b"before"])

        pty.unplug()
        assert wait_for(lambda: not link.connected)
        with pytest.raises(LinkDown):
            link.send(b"into the void")
        # Stays down while the device is away (several backoff rounds).
        assert not wait_for(lambda: link.connected, timeout=0.6)

        pty.plug()
        assert link.wait_connected(10)
        pty.send_frame(b"after")
        assert wait_for(lambda: frames == [b"before", b"after"])
        link.send(b"hello again")
        assert pty.read_frames(1) == [b"hello again"]
    assert states[:3] == [True, False, True]
    assert link.opens == 2 and link.failures >= 1


def test_link_started_before_the_device_is_plugged_in(tmp_path: Path) -> None:
    p = PlugPty(tmp_path / "ttyACM0")
    try:
        with SerialLink(str(p.path), backoff_max=0.1) as link:
            assert not wait_for(lambda: link.connected, timeout=0.3)
            p.plug()
            assert link.wait_connected(10)
            p.send_frame(b"first")
            assert link.recv(timeout=5) == b"first"
    finally:
        p.close()


def test_socket_url_reconnects_when_the_server_returns() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.settimeout(10)
    try:
        with SerialLink(f"socket://127.0.0.1:{port}", backoff_max=0.1) as link:
            conn, _ = srv.accept()
            assert link.wait_connected(5)
            conn.sendall(encode(b"over tcp"))
            assert link.recv(timeout=5) == b"over tcp"
            conn.close()  # the serial server drops us
            assert wait_for(lambda: not link.connected)
            conn, _ = srv.accept()  # the link dials again
            assert link.wait_connected(5)
            conn.sendall(encode(b"back"))
            assert link.recv(timeout=5) == b"back"
            link.send(b"to server")
            conn.settimeout(5)
            dec = FrameDecoder()
            frames: list[bytes] = []
            while b"to server" not in frames:
                frames += dec.feed(conn.recv(100))
            assert frames == [b"", b"to server"]  # the hello on open, then ours
            conn.close()
    finally:
        srv.close()


@pytest.mark.skipif(not SocatPair.available(), reason="socat not installed")
def test_two_links_over_socat_survive_a_restart(tmp_path: Path) -> None:
    pair = SocatPair(tmp_path / "gw", tmp_path / "dev")
    pair.start()
    try:
        with SerialLink(str(pair.a), backoff_max=0.1) as a, SerialLink(
            str(pair.b), backoff_max=0.1
        ) as b:
            assert a.wait_connected(5) and b.wait_connected(5)
            a.send(b"ping")
            assert b.recv(timeout=5) == b"ping"
            pair.stop()
            assert wait_for(lambda: not a.connected and not b.connected)
            pair.start()
            assert a.wait_connected(10) and b.wait_connected(10)
            b.send(b"pong")
            assert a.recv(timeout=5) == b"pong"
    finally:
        pair.stop()


def test_link_says_hello_and_is_ready_only_once_the_device_speaks(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), backoff_max=0.1) as link:
        assert link.wait_connected(5)
        assert pty.read_frames(1, timeout=0.3) == []
        assert pty.hellos == 1  # an empty frame on open
        assert not link.peer_ready
        pty.hello()
        assert link.wait_ready(5)
        assert link.recv(timeout=0.2) is None  # hellos are not envelopes
        assert link.stats()["hellos_rx"] == 1 and link.stats()["frames_rx"] == 0

        pty.unplug()
        assert wait_for(lambda: not link.connected)
        assert not link.peer_ready
        pty.plug()
        assert link.wait_connected(10)
        assert not link.peer_ready  # a new port: not heard yet
        pty.send_frame(b"an envelope counts too")
        assert link.wait_ready(5)
        assert link.recv(timeout=5) == b"an envelope counts too"


def test_device_link_answers_each_hello(pty: PlugPty) -> None:
    with SerialLink(str(pty.path), answer_hello=True, backoff_max=0.1) as link:
        assert link.wait_connected(5)
        pty.read_frames(1, timeout=0.3)
        assert pty.hellos == 1
        pty.hello()
        assert wait_for(lambda: (pty.read_frames(1, timeout=0.05), pty.hellos)[1] == 2)
        time.sleep(HELLO_ANSWER_INTERVAL_S)
        pty.hello()
        assert wait_for(lambda: (pty.read_frames(1, timeout=0.05), pty.hellos)[1] == 3)
        assert link.stats()["frames_tx"] == 0  # hellos are not counted as envelopes


def test_two_answering_ends_do_not_bounce_hellos_at_line_rate() -> None:
    # loop:// echoes: an answering link hears its own hellos, the worst case.
    with SerialLink("loop://", answer_hello=True, backoff_max=0.1) as link:
        assert link.wait_connected(5)
        time.sleep(1.0)
        assert link.stats()["hellos_rx"] <= 1.0 / HELLO_ANSWER_INTERVAL_S + 2


@pytest.mark.filterwarnings("ignore:set(Name|Daemon)\\(\\) is deprecated:DeprecationWarning")
def test_rfc2217_url_through_a_serial_server_survives_a_hangup() -> None:
    # The serial server echoes (its port is loop://): what we send comes back.
    server = Rfc2217Server("loop://")
    try:
        with SerialLink(f"rfc2217://127.0.0.1:{server.port}", backoff_max=0.1) as link:
            assert link.wait_connected(10)
            link.send(b"over the network")
            assert link.recv(timeout=5) == b"over the network"
            assert link.wait_ready(5)  # our own hello came back
            server.drop_client()
            assert wait_for(lambda: not link.connected)
            assert link.wait_connected(10)
            link.send(b"again")
            assert link.recv(timeout=5) == b"again"
    finally:
        server.close()

"""The device MQTT client (``micropython_port.mqtt``) under the real
MicroPython unix port against a real Mosquitto: credentials and ACLs, QoS 0
and 1 both ways, keepalive, a broker restart (kept and lost sessions), and a
scripted TCP broker that withholds a PUBACK and then sends garbage."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.mp_helpers import ROOT, MicroPythonFailed, mp_binary, mp_env, run_mp

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.timeout(180)]

UP = "moteseal/v1/up/"
DOWN = "moteseal/v1/down/"


def _last_json(out: str) -> dict:
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


class MpProcess:
    """A MicroPython script run in the background, read line by line."""

    def __init__(self, code: str, tmp_path: Path, args: list[str] = ()) -> None:
        script = tmp_path / f"mp_{time.monotonic_ns()}.py"
        script.write_text(code)
        self.proc = subprocess.Popen([mp_binary(), str(script), *args], cwd=ROOT, env=mp_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ln in self.lines:
                if ln.startswith(prefix):
                    return ln
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        raise MicroPythonFailed(f"no line {prefix!r}; output:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 60) -> dict:
        try:
            self.proc.wait(timeout)
        finally:
            self.stop()
        self._thread.join(5)
        if self.proc.returncode != 0:
            raise MicroPythonFailed("\n".join(self.lines))
        return _last_json("\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


ROUND_TRIP = """
import sys, json, time
from micropython_port.mqtt import MQTTClient
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
got = []
def on_msg(buf, n):
    got.append(bytes(buf[:n]).decode())
c = MQTTClient("moteseal-" + user, "127.0.0.1", port, user, pw, keepalive=30, on_message=on_msg)
sp = c.connect()
c.subscribe(b"moteseal/v1/down/" + user.encode(), 1)
print("ready", sp)
up = b"moteseal/v1/up/" + user.encode()
msg = bytearray(16)
for i in range(25):
    n = len("m%02d" % i)
    for j, ch in enumerate(b"m%02d" % i):
        msg[j] = ch
    c.publish(up, msg, n, 1 if i < 20 else 0)
    c.poll(0)
t0 = time.ticks_ms()
while (len(got) < 5 or c.inflight()) and time.ticks_diff(time.ticks_ms(), t0) < 15000:
    c.poll(20)
c.disconnect()
print(json.dumps({"got": got, "inflight": c.inflight(), "reconnects": c.reconnects}))
"""


def test_qos0_and_qos1_both_ways_with_credentials_and_acls(mosquitto, mqtt_client, tmp_path) -> None:
    broker = mosquitto(auth=True, accounts={"m1": "device", "mon": "monitor", "gw": "gateway"})
    mon = mqtt_client(broker, user="mon")
    assert mon.subscribe("moteseal/#") == [1]
    gw = mqtt_client(broker, user="gw")
    mp = MpProcess(ROUND_TRIP, tmp_path, [str(broker.port), "m1", broker.passwords["m1"]])
    try:
        mp.wait_line("ready")
        for i in range(5):
            assert gw.publish(DOWN + "m1", b"cmd %d" % i) == 0
        out = mp.finish()
    finally:
        mp.stop()
    assert out == {"got": [f"cmd {i}" for i in range(5)], "inflight": 0, "reconnects": 0}
    ups = [p for t, p in mon.collect(30, timeout=10) if t == UP + "m1"]
    assert ups == [b"m%02d" % i for i in range(25)]


def test_a_wrong_password_is_refused_with_the_connack_code(mosquitto) -> None:
    broker = mosquitto(auth=True, accounts={"m1": "device"})
    out = run_mp(f"""
from micropython_port.mqtt import MQTTClient
c = MQTTClient("moteseal-m1", "127.0.0.1", {broker.port}, "m1", "not-the-password")
try:
    c.connect()
    print("connected")
except OSError as e:
    print("refused", e.errno, e.args[1])
print("closed", c.connected)
""")
    # ECONNREFUSED (111) with the CONNACK return code 5, "not authorized"
    assert "refused 111 5" in out
    assert "closed False" in out


def test_keepalive_pings_keep_an_idle_connection(mosquitto) -> None:
    broker = mosquitto(auth=False)
    out = run_mp(f"""
import json, time
from micropython_port.mqtt import MQTTClient
c = MQTTClient("idle", "127.0.0.1", {broker.port}, keepalive=2)
c.connect()
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 5500:
    c.poll(50)
print(json.dumps({{"up": c.connected, "reconnects": c.reconnects}}))
""")
    res = _last_json(out)
    # keepalive 2 s: the client sends nothing but a PINGREQ after each 1 s
    # of silence. Without them Mosquitto closes the connection after 1.5 x
    # the keepalive (3 s) and the client would have reconnected; an
    # unanswered PINGREQ would drop it after 2 s.
    assert res == {"up": True, "reconnects": 0}


SELF_LOOP = """
import sys, json, time
from micropython_port.mqtt import MQTTClient
port = int(sys.argv[1])
seen = {}
def on_msg(buf, n):
    k = bytes(buf[:n])
    seen[k] = seen.get(k, 0) + 1
c = MQTTClient("moteseal-loop", "127.0.0.1", port, keepalive=2, inflight=4,
               timeout_ms=3000, on_message=on_msg, backoff_min_ms=100)
c.connect()
c.subscribe(b"t/loop", 1)
msg = bytearray(8)
for i in range(30):
    s = b"n%03d" % i
    for j in range(4):
        msg[j] = s[j]
    while True:
        try:
            c.publish(b"t/loop", msg, 4, 1)
            break
        except OSError:
            c.poll(50)
    print("sent", i)
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 100:
        c.poll(20)
t0 = time.ticks_ms()
while (len(seen) < 30 or c.inflight()) and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    c.poll(20)
print(json.dumps({"distinct": len(seen), "inflight": c.inflight(), "reconnects": c.reconnects,
                  "session_present": c.session_present}))
"""


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_a_broker_restart_loses_no_qos1_message(mosquitto, tmp_path, how: str) -> None:
    """The broker goes away in the middle of 30 QoS 1 publishes. After a
    SIGTERM it saved the session (session present: subscription kept);
    after a SIGKILL it lost it (the client subscribes again). Either way
    every message comes back at least once and nothing stays in flight."""
    broker = mosquitto(auth=False)
    mp = MpProcess(SELF_LOOP, tmp_path, [str(broker.port)])
    try:
        mp.wait_line("sent 10")
        if how == "kill":
            assert broker.proc is not None
            broker.proc.kill()
            broker.proc.wait(10)
            broker.proc = None
        else:
            broker.stop()
        time.sleep(0.5)
        broker.start()
        res = mp.finish(timeout=90)
    finally:
        mp.stop()
    assert res["distinct"] == 30 and res["inflight"] == 0
    assert res["reconnects"] >= 1
    assert res["session_present"] is (how == "terminate")


class ScriptedBroker:
    """A TCP listener that plays a misbehaving broker, byte by byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]

    @staticmethod
    def read_packet(conn: socket.socket) -> bytes:
        def exact(n: int) -> bytes:
            b = b""
            while len(b) < n:
                chunk = conn.recv(n - len(b))
                if not chunk:
                    raise ConnectionError("closed")
                b += chunk
            return b
        first = exact(1)
        rem, shift, head = 0, 0, first
        while True:
            c = exact(1)
            head += c
            rem |= (c[0] & 0x7F) << shift
            shift += 7
            if not c[0] & 0x80:
                break
        return head + exact(rem)


def test_unacked_publish_is_resent_with_dup_after_garbage_forces_a_reconnect(tmp_path) -> None:
    """A scripted broker withholds a PUBACK, sends a QoS 1 message larger
    than the client's buffer (skipped, but acknowledged, so a broker would
    not redeliver it forever) and then a reserved packet type. The client
    drops the connection, reconnects, and resends the unacknowledged
    publish with DUP and the same packet id (MQTT 3.1.1 section 4.4)."""
    srv = ScriptedBroker()
    seen: list[bytes] = []
    result: dict = {}

    def play() -> None:
        try:
            conn, _ = srv.sock.accept()
            conn.settimeout(10)
            assert ScriptedBroker.read_packet(conn)[0] == 0x10  # CONNECT
            conn.sendall(bytes.fromhex("20 02 00 00"))
            seen.append(ScriptedBroker.read_packet(conn))  # PUBLISH, not acknowledged
            body = b"\x00\x01t\x07\x77" + b"\xee" * 2000
            conn.sendall(bytes([0x32, len(body) & 0x7F | 0x80, len(body) >> 7]) + body)
            result["ack_oversized"] = ScriptedBroker.read_packet(conn)
            conn.sendall(bytes.fromhex("f0 00"))  # a reserved packet type: garbage
            conn2, _ = srv.sock.accept()  # the client drops and comes back
            conn2.settimeout(10)
            result["reconnect"] = ScriptedBroker.read_packet(conn2)[0]
            conn2.sendall(bytes.fromhex("20 02 01 00"))  # session present
            again = ScriptedBroker.read_packet(conn2)  # the resend
            seen.append(again)
            conn2.sendall(bytes([0x40, 2]) + again[-6:-4])  # PUBACK for its packet id
            time.sleep(1.0)
            conn.close()
            conn2.close()
        except Exception as exc:  # reported by the assertions below
            result["error"] = repr(exc)

    t = threading.Thread(target=play, daemon=True)
    t.start()
    try:
        out = run_mp(f"""
import json, time
from micropython_port.mqtt import MQTTClient
got = []
c = MQTTClient("dup", "127.0.0.1", {srv.port}, keepalive=0, backoff_min_ms=50,
               on_message=lambda b, n: got.append(n))
c.connect()
c.publish(b"t", b"data", 4, 1)
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 5000 and (c.reconnects == 0 or c.inflight()):
    c.poll(20)
print(json.dumps({{"inflight": c.inflight(), "reconnects": c.reconnects, "up": c.connected,
                   "delivered": got}}))
""", timeout=60)
    finally:
        t.join(15)
        srv.sock.close()
    assert "error" not in result, result
    first, again = seen
    assert first[0] == 0x32 and again[0] == 0x3A  # QoS 1, then QoS 1 with DUP
    assert first[1:] == again[1:]  # same packet id, topic and payload
    assert result["reconnect"] == 0x10
    assert result["ack_oversized"] == bytes.fromhex("40 02 07 77")
    # The oversized message was acknowledged but never delivered.
    assert _last_json(out) == {"inflight": 0, "reconnects": 1, "up": True, "delivered": []}


def test_a_client_started_before_its_broker_connects_and_subscribes_later(tmp_path) -> None:
    """A board that boots before its broker: ``start()`` does not raise,
    the subscription is remembered, and ``poll()`` connects once the broker
    is up; a publish made while offline is delivered then."""
    from gateway.broker import LocalBroker, free_port

    port = free_port()
    mp = MpProcess(f"""
import json, time
from micropython_port.mqtt import MQTTClient
got = []
c = MQTTClient("early", "127.0.0.1", {port}, keepalive=5, on_message=lambda b, n: got.append(bytes(b[:n])),
               backoff_min_ms=100)
print("start", c.start(), c.subscribe(b"t/early", 1))
c.publish(b"t/early", b"queued while offline", 20, 1)
t0 = time.ticks_ms()
while (not got or c.inflight()) and time.ticks_diff(time.ticks_ms(), t0) < 20000:
    c.poll(50)
print(json.dumps({{"got": [g.decode() for g in got], "up": c.connected, "inflight": c.inflight()}}))
""", tmp_path)
    broker = LocalBroker(tmp_path / "late", auth=False, port=port)
    try:
        assert mp.wait_line("start") == "start False None"
        time.sleep(0.5)
        broker.start()
        res = mp.finish(timeout=60)
    finally:
        mp.stop()
        broker.stop()
    assert res == {"got": ["queued while offline"], "up": True, "inflight": 0}

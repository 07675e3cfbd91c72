"""Fleet broadcast as a user runs it (issue 17, "Fleet broadcast"): three
MicroPython devices (the unix port running ``micropython_port/app.py``) and
ten simulated ones (``moteseal.sim.simulate.SimulatedSensor``) in one group
through a real Mosquitto with the shipped ACLs, a real gateway and a real
``moteseal hub run``, driven by ``moteseal group ...`` and ``moteseal send
--group``:

- one publish reaches all thirteen;
- a member's forged group message is refused by the others, a replayed
  one by all (injected with the hub's account: a member may not publish
  there at all, which is shown too);
- a removed member, still subscribed and still allowed by the ACL, reads
  nothing afterwards;
- a member that was off during a rotation (a reboot: no group state)
  catches up on the current epoch when it wakes, and what was sent while
  it slept is not replayed to it;
- a restarted hub restores the groups in a new epoch and every member
  follows;
- padding from the registry (issue 17, "Padding"): mp-0 and sim-00 are
  provisioned with ``--pad``; their readings of different length all
  travel in envelopes of one length, key messages and group messages
  reach them padded too.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from device import envelope as E
from device.counter import Msg1Counter
from device.counter_file import FileCounterStore
from device.delivery import Outbox
from device.errors import RemoteError
from device.group import GROUP_HEAD, MAC_BYTES, TAG_BYTES, Groups, encode_group_header_into
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import device_session, read_bundle
from moteseal.links.mqtt_link import MqttLink
from moteseal.sim.simulate import Fleet, SimulatedSensor
from tests.cli_fleet import CLI, make_fleet, run
from tests.polling import wait_until
from tests.conftest import MqttTestClient
from tests.gateway_proc import stop_process
from tests.mp_helpers import mp_binary, mp_env

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython, pytest.mark.timeout(600)]

HUB = "hub1"
GID = "valves"
TOPIC = "moteseal/v1/group/" + GID
MPS = ["mp-0", "mp-1", "mp-2"]
SIMS = [f"sim-{i:02d}" for i in range(10)]
PADDED = ["mp-0", "sim-00"]

DRIVER = """
import sys, json
from binascii import hexlify
from micropython_port.main import load_bundle
bundle = load_bundle(sys.argv[1])
from micropython_port.app import Device

def log(ev, detail):
    print(json.dumps({"event": ev, "detail": detail}))

dev = Device(bundle, sys.argv[2], None, log, None, None, 16, groups=16)

def on_group(gid, buf, n):
    print(json.dumps({"event": "group", "gid": gid.decode(), "hex": hexlify(buf[:n]).decode()}))

dev.on_group = on_group
dev.interval_ms = 500
dev.run(None, 0, int(sys.argv[3]))
print(json.dumps({"event": "summary", "counts": dev.counts}))
"""



class GroupSensor(SimulatedSensor):
    """A simulated sensor that is a group member: key messages come in its
    session (``SimulatedSensor.groups``), group messages from its group
    topic through the fleet's one thread; ``got`` records each outcome."""

    def on_envelope(self, data: bytes, now: float) -> None:
        if len(data) > 1 and data[1] == GROUP_HEAD:
            out = bytearray(256)
            try:
                n = self.groups.receive_into(data, len(data), out)
                self.got.append(bytes(out[:n]))
            except RemoteError as e:
                self.got.append(type(e).__name__)
            return
        super().on_envelope(data, now)


class GroupLink(MqttLink):
    """The simulated device's one MQTT connection (the broker allows one per
    account) also subscribed to the group topic, whose messages go to
    ``on_envelope`` like the device's envelopes."""

    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        super()._on_connect(client, userdata, flags, rc, props)
        if not rc.is_failure:
            client.subscribe(TOPIC, qos=1)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.topic == TOPIC and self._on_envelope is not None:
            self._on_envelope(bytes(msg.payload))
            self._ack(msg.mid, msg.qos)
            return
        super()._on_message(client, userdata, msg)


class MpDevice:
    """``micropython`` running the device app with groups; its JSON event
    lines in a file."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.out = tmp / f"{name}.out"
        self.proc: subprocess.Popen | None = None
        (tmp / "driver.py").write_text(DRIVER)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [mp_binary(), str(self.tmp / "driver.py"), str(self.tmp / "bundles" / f"{self.name}.bundle"),
             str(self.tmp / f"{self.name}.ctr"), "400000"],
            stdout=open(self.out, "a"), stderr=subprocess.STDOUT, env=mp_env(), cwd=self.tmp)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def events(self) -> list[dict[str, Any]]:
        out = []
        for ln in self.out.read_text().splitlines():
            if ln.startswith("{"):
                try:
                    out.append(json.loads(ln))
                except ValueError:
                    pass  # a line being written
        return out

    def got(self) -> list[Any]:
        """Group payloads opened and refusals, in order."""
        return [bytes.fromhex(e["hex"]) if e["event"] == "group" else e["detail"]
                for e in self.events() if e["event"] in ("group", "group_refused")]

    def epochs(self) -> list[int]:
        return [e["detail"] for e in self.events() if e["event"] == "group_subscribed"]


class World:
    def __init__(self, tmp: Path, broker: Any, env: dict[str, str]) -> None:
        self.tmp, self.broker, self.env = tmp, broker, env
        self.hub: subprocess.Popen | None = None
        self.hub_runs = 0
        self.mps = {m: MpDevice(m, tmp) for m in MPS}
        self.fleet = Fleet()
        self.sims: dict[str, GroupSensor] = {}
        self.links: list[MqttLink] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start_hub(self) -> None:
        self.hub_runs += 1
        out = self.tmp / f"hub{self.hub_runs}.out"
        self.hub = subprocess.Popen(CLI + ["hub", "run", "--config", str(self.tmp / "hub.toml"),
                                           "--json"], stdout=open(out, "w"),
                                    stderr=open(self.tmp / f"hub{self.hub_runs}.err", "w"),
                                    env=self.env, cwd=self.tmp)
        self.hub_out = out

    def stop_hub(self) -> None:
        stop_process(self.hub, 20)
        self.hub = None

    def hub_events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.hub_out.read_text().splitlines() if ln.startswith("{")]

    def start_sims(self) -> None:
        backend = NaclBackend()
        for name in SIMS:
            b = read_bundle(self.tmp / "bundles" / f"{name}.bundle")
            counter = Msg1Counter(FileCounterStore(str(self.tmp / f"{name}.ctr")))
            sensor = GroupSensor(device_session(backend, b, counter), None, 0.5,  # type: ignore[arg-type]
                                 outbox=Outbox(16))
            sensor.groups = Groups(backend, HUB.encode())
            sensor.got = []
            link = GroupLink(name, "127.0.0.1", self.broker.port, username=name,
                             password=b.link["password"], on_envelope=self.fleet.deliver(sensor))
            sensor.link = link
            self.links.append(link)
            link.start()
            self.fleet.add(sensor)
            self.sims[name] = sensor
        self.thread = threading.Thread(target=self.fleet.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        for link in self.links:
            link.close()
        for m in self.mps.values():
            m.stop()
        self.stop_hub()

    # -- what the members got ------------------------------------------------------

    def got(self, name: str) -> list[Any]:
        if name in self.sims:
            return list(self.sims[name].got)
        return self.mps[name].got()

    def last(self, name: str) -> Any:
        g = self.got(name)
        return g[-1] if g else None

    def wait_all(self, names: list[str], value: Any, timeout: float = 60.0) -> dict[str, Any]:
        ok = wait_until(lambda: all(value in self.got(n) for n in names), timeout, step=0.2)
        return {} if ok else {n: self.got(n)[-3:] for n in names if value not in self.got(n)}

    def epoch_everywhere(self, names: list[str], epoch: int, timeout: float = 90.0) -> list[str]:
        def lagging() -> list[str]:
            out = []
            for n in names:
                if n in self.sims:
                    m = self.sims[n].groups.member(GID.encode())
                    if m is None or m.epoch != epoch:
                        out.append(n)
                elif epoch not in self.mps[n].epochs():
                    out.append(n)
            return out
        wait_until(lambda: not lagging(), timeout, step=0.2)
        return lagging()


def group(world: World, *args: str) -> dict[str, Any]:
    r = run(*args, "--config", str(world.tmp / "hub.toml"), "--json", "--wait", "60",
            env=world.env, cwd=world.tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout)
    assert row["state"] == "done", row
    return json.loads(row["result"])


def forge(sensor: GroupSensor, payload: bytes, members: int) -> bytes:
    """What a member can make from what it holds: the group key and its own
    MAC key, its own MAC in every slot, under a counter not yet used."""
    m = sensor.groups.member(GID.encode())
    ctr = m.window.hi + 1
    ct_len = len(payload) + TAG_BYTES
    buf = bytearray(60 + ct_len + 3 + MAC_BYTES * members)
    off = encode_group_header_into(buf, HUB.encode(), GID.encode(), m.epoch, ctr, ct_len)
    body = off + m.cipher.encrypt_into(ctr, buf, off, payload, 0, len(payload), buf, off)
    at = E.put_head(buf, body, 2, MAC_BYTES * members)
    tag = bytearray(16)
    m.mac.encrypt_into(ctr, buf, body, tag, 0, 0, tag, 0)
    for i in range(members):
        buf[at + i * MAC_BYTES:at + (i + 1) * MAC_BYTES] = tag[:MAC_BYTES]
    return bytes(buf[:at + MAC_BYTES * members])


@pytest.fixture
def world(tmp_path: Path, mosquitto, gateway_process):
    broker = mosquitto(accounts={"gw": "gateway", HUB: "hub", "mon": "monitor"})
    env, reg = make_fleet(tmp_path, broker, MPS + SIMS, peer=HUB)
    for d in PADDED:  # padding per device, from the registry into the bundle
        r = run("provision", d, "--registry", reg, "--replace", "--out",
                str(tmp_path / "bundles" / f"{d}.bundle"), "--link", "mqtt", "--host", "127.0.0.1",
                "--port", str(broker.port), "--username", d, "--pad", "32,64,128,256", "--json",
                env=dict(env, MOTESEAL_LINK_PASSWORD=broker.passwords[d]))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pad"]["up"] == [32, 64, 128, 256]
    for d in MPS + SIMS:
        broker.set_groups(d, [GID])
    gateway_process(broker, peers=[HUB])
    r = run("hub", "init", "--registry", reg, "--out", str(tmp_path / "hub.toml"), env=env)
    assert r.returncode == 0, r.stderr
    cfg = (tmp_path / "hub.toml").read_text()
    cfg = cfg.replace("port = 1883", f"port = {broker.port}", 1).replace("port = 8080", "port = 0")
    (tmp_path / "hub.toml").write_text(cfg)
    w = World(tmp_path, broker, env)
    try:
        yield w
    finally:
        w.close()


def test_three_micropython_and_ten_simulated_devices_in_one_group_through_the_hub(world) -> None:
    w = world
    everyone = MPS + SIMS
    # One monitor (the broker allows one connection per account): group
    # topics into its queue, up topics into ``ups``.
    mon = MqttTestClient(w.broker, "mon")
    ups: list[tuple[str, bytes]] = []
    mon.client.on_message = lambda c, u, m: (ups.append((m.topic, bytes(m.payload)))
                                             if "/up/" in m.topic
                                             else mon.messages.put((m.topic, bytes(m.payload))))
    assert mon.subscribe("moteseal/v1/up/+") == [1]
    assert mon.subscribe("moteseal/v1/group/#") == [1]
    w.start_hub()
    for m in w.mps.values():
        m.start()
    w.start_sims()
    # Every device has a session with the hub (it stored a reading of each).
    assert wait_until(lambda: {e["device"] for e in w.hub_events() if e["event"] == "telemetry"}
                      >= set(everyone), 90, step=0.2), w.hub_events()[-5:]
    created = group(w, "group", "create", GID, *everyone)
    assert created["members"] == 13 and created["epoch"] == 0
    assert w.epoch_everywhere(everyone, 0) == []
    listed = json.loads(run("group", "list", "--config", str(w.tmp / "hub.toml"), "--json",
                            env=w.env).stdout)
    assert listed == {GID: {"epoch": 0, "members": everyone}}
    group_file = w.tmp / "readings.sqlite.groups"
    assert group_file.stat().st_mode & 0o777 == 0o600

    # One publish for thirteen devices.
    sent = group(w, "send", "--group", GID, "valve=closed")
    # array, head, src "hub1", gid "valves", epoch, ctr, ct head, ct (12 + tag),
    # MAC list head, 13 MACs: the per-message cost (docs/hub.md).
    assert sent["members"] == 13
    assert sent["bytes"] == 1 + 1 + 5 + 7 + 1 + 1 + 2 + (12 + TAG_BYTES) + 2 + 13 * MAC_BYTES == 152
    assert w.wait_all(everyone, b"valve=closed") == {}
    (topic, genuine), = mon.collect(1)
    assert topic == TOPIC and mon.quiet(1.0) == []  # exactly one publish

    # A member may not publish on the group topic at all (ACL) ...
    member = MqttTestClient(w.broker, "mp-2")  # its device is off a moment
    w.mps["mp-2"].stop()
    member.publish(TOPIC, b"from a member")
    member.close()
    w.mps["mp-2"].start()
    assert mon.quiet(0.5) == []
    # ... and what it forges, even injected by the broker, the others refuse.
    intruder = MqttTestClient(w.broker, HUB, client_id="not-the-hub")
    forger = "sim-07"
    forged = forge(w.sims[forger], b"valve=open", 13)
    assert intruder.publish(TOPIC, forged) == 0
    others = [d for d in everyone if d != forger]
    assert wait_until(lambda: all(w.last(d) == "AuthError" for d in others), 60, step=0.2), \
        {d: w.got(d)[-2:] for d in others}
    assert w.last(forger) == b"valve=open"  # it fools only itself
    # A replayed genuine message is refused by all.
    assert intruder.publish(TOPIC, genuine) == 0
    assert wait_until(lambda: all(w.last(d) == "ReplayError" for d in others), 60, step=0.2), \
        {d: w.got(d)[-2:] for d in others}

    # A removed member reads nothing afterwards (still subscribed and still
    # allowed by the broker: the removal is cryptographic).
    gone = "mp-2"
    removed = group(w, "group", "remove", GID, gone)
    assert removed["epoch"] == 1 and removed["members"] == 12
    stay = [d for d in everyone if d != gone]
    assert w.epoch_everywhere(stay, 1) == []
    group(w, "send", "--group", GID, "after removal")
    assert w.wait_all(stay, b"after removal") == {}
    assert wait_until(lambda: w.mps[gone].got()[-1:] == ["DecodeError"], 30, step=0.2), w.mps[gone].got()
    assert b"after removal" not in w.got(gone)

    # A member off during a rotation (a reboot: no group state) catches up
    # when it wakes, and is not replayed what it slept through.
    sleeper = "mp-1"
    w.mps[sleeper].stop()
    group(w, "group", "rotate", GID)
    awake = [d for d in stay if d != sleeper]
    assert w.epoch_everywhere(awake, 2) == []
    group(w, "send", "--group", GID, "while asleep")
    assert w.wait_all(awake, b"while asleep") == {}
    w.mps[sleeper].start()
    assert w.epoch_everywhere([sleeper], 2) == []
    assert any(e["event"] == "group_catch_up" and e["device"] == sleeper for e in w.hub_events())
    group(w, "send", "--group", GID, "awake")
    assert w.wait_all(stay, b"awake") == {}
    assert b"while asleep" not in w.got(sleeper)

    # A restarted hub: the groups come back in a new epoch (no key was
    # stored), and every member follows when it handshakes again.
    w.stop_hub()
    w.start_hub()
    assert wait_until(lambda: json.loads(run("group", "list", "--config", str(w.tmp / "hub.toml"),
                                             "--json", env=w.env).stdout)[GID]["epoch"] == 3, 30, step=0.2)
    assert w.epoch_everywhere(stay, 3, timeout=120) == []
    group(w, "send", "--group", GID, "after restart")
    assert w.wait_all(stay, b"after restart") == {}
    assert b"after restart" not in w.got(gone)

    # Padding: every data envelope of a padded device carries a ciphertext
    # of one length, though its readings grew (mp-0's "seq" passes 23: one
    # more CBOR byte; the header's nonce grows in the clear, as
    # docs/security.md says); an unpadded device's show their lengths.
    def seqs() -> list[float]:
        r = run("readings", "--config", str(w.tmp / "hub.toml"), "--device", "mp-0", "--field",
                "seq", "--json", env=w.env)
        return [json.loads(ln)["value"] for ln in r.stdout.splitlines()]

    assert wait_until(lambda: max(seqs()) >= 24, 120, 1.0), seqs()
    assert min(seqs()) < 24
    lengths: dict[str, set[int]] = {}
    for topic, env in list(ups):
        e = E.decode(env)
        if e.head == E.HEAD_DATA:
            lengths.setdefault(topic.rsplit("/", 1)[1], set()).add(e.msg_len)
    assert all(len(lengths[d]) == 1 for d in PADDED), repr({d: sorted(v) for d, v in lengths.items()})
    assert len(lengths["sim-01"]) > 1, lengths

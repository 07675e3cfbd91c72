"""``moteseal demo``: the whole system on one machine, in one command.

Starts Mosquitto on a free loopback port with ``broker_config/local.conf``
(accounts and ACLs included), a gateway, a hub (``moteseal.hub.Hub``: the
store, the dashboard on a free loopback port) and a few simulated sensors,
then shows side by side what the gateway relays (ids, kinds and sizes: all
it can see) and what the hub decrypts and stores (the readings). Part way
through it plays an attacker on the broker: it publishes a copy of a real
envelope with one byte flipped, then a real envelope again, exactly as the
relay would, and shows the hub refusing both. Stops everything on Ctrl-C or
after ``--seconds``.

Invariants:
- Every process and thread the demo starts is stopped in its ``finally``,
  and its scratch directory (broker files, registry, store, gateway log)
  is removed unless ``--keep`` is given.
- Nothing secret is printed: the key, the PSKs and the MQTT passwords stay
  in files of mode 0600 inside the scratch directory (mode 0700).
- Every text line fits 80 columns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["run_demo", "demo"]

WIDTH = 80
# field -> (unit, decimals) for the simulated sensors' readings (moteseal.sim.simulate)
UNITS = {"t": ("°C", 2), "rh": ("%", 1), "bat": ("mV", 0)}
VERDICT_WAIT_S = 3.0  # how long the attacker waits for the hub's answer to one forgery


class _Printer:
    def __init__(self, echo: Callable[[str], None], as_json: bool) -> None:
        self.echo = echo
        self.as_json = as_json
        self.lock = threading.Lock()

    def line(self, who: str, text: str, record: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            if self.as_json:
                self.echo(json.dumps({"who": who, **record}, sort_keys=True))
                return
            stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
            self.echo(f"{stamp}  {who:<7}  {text}"[:WIDTH])

    def header(self) -> None:
        if not self.as_json:
            self.echo(f"{'UTC':<12}  {'who':<7}  what")


def format_reading(reading: dict[str, Any]) -> str:
    """``t 21.35 °C  rh 45.2 %  bat 3290 mV``: units and fixed decimals."""
    parts = []
    for k, v in reading.items():
        if k == "seq":
            continue
        unit, places = UNITS.get(k, ("", 2))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k} {v:.{places}f} {unit}".rstrip())
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


class _Attacker:
    """Someone on the broker with the relay's account. Once armed it holds
    back the next data envelope a sensor sends the hub, publishes a copy
    with one byte flipped on the hub's topic (as the relay would), then the
    real one, then the real one again: the hub refuses the first and the
    last, and still takes the real one (a failed decrypt changes nothing)."""

    def __init__(self, relay: Any, out: _Printer) -> None:
        self.out = out
        self.link = relay.links["mqtt"]
        self.armed = threading.Event()
        self.held = threading.Event()
        self.captured: tuple[str, bytes, Any] | None = None
        self.pending: tuple[str, int] | None = None  # (what, size) awaiting the hub's verdict
        self.verdict = threading.Event()
        self.verdicts: dict[str, str] = {}
        self.sent: list[str] = []
        self._send = self.link.send
        self.link.send = self._relaying

    def _relaying(self, dst: str, envelope: bytes, done: Any) -> None:
        from gateway.envelope import Rejected, read_header
        if self.armed.is_set() and not self.held.is_set():
            try:
                h = read_header(envelope)
            except Rejected:
                h = None
            if h is not None and h.dst == "hub" and h.kind == 2:  # a data envelope
                self.captured = (h.src, bytes(envelope), done)
                self.held.set()
                return
        self._send(dst, envelope, done)

    def judged(self, r: dict[str, Any]) -> str | None:
        """Called with each hub report: the forgery it answers, if any."""
        p = self.pending
        if p is None or r["event"] not in ("refused", "rejected", "duplicate"):
            return None
        if r["event"] != "duplicate" and r.get("size") != p[1]:
            return None
        self.verdicts[p[0]] = r.get("error") or r["event"]
        self.pending = None
        self.verdict.set()
        return p[0]

    def _forge(self, what: str, data: bytes, text: str, record: dict[str, Any]) -> bool:
        self.verdict.clear()
        self.pending = (what, len(data))
        self.out.line("attack", text, {"event": "injected", "what": what, "size": len(data), **record})
        self._send("hub", data, None)
        self.sent.append(what)
        return self.verdict.wait(VERDICT_WAIT_S)

    def run(self, stop: threading.Event, after: float) -> None:
        if stop.wait(after):
            return
        self.armed.set()
        while not self.held.wait(0.1):
            if stop.is_set():
                return
        assert self.captured is not None
        src, env, done = self.captured
        where = len(env) - 1  # in the AEAD tag: any byte of the ciphertext would do
        forged = env[:where] + bytes([env[where] ^ 0x01]) + env[where + 1:]
        try:
            if not self._forge("tampered", forged, f"held {src}'s data; sent it with byte {where} "
                               f"flipped", {"device": src}):
                return
        finally:
            self.out.line("attack", "released the real one", {"event": "released", "device": src})
            self._send("hub", env, done)  # the real one, late
        if stop.wait(0.5):
            return
        self._forge("replayed", env, f"sent {src}'s real data again, unchanged", {"device": src})


def _make_hub_files(workdir: Path, names: list[str], broker: Any, status: Path) -> tuple[Path, list[Any]]:
    """A registry with a fresh peer key and one provisioned bundle per
    sensor, the hub's MQTT password file and a hub.toml; returns the
    hub.toml path and the bundles."""
    from device.session import DEFAULT_SUITE
    from moteseal.hub.config import TEMPLATE
    from moteseal.keys.keyfile import generate_keypair, write_key_file, write_private_file
    from moteseal.keys.provision import provision_device
    from moteseal.keys.registry import Registry

    kp = generate_keypair()
    write_key_file(workdir / "hub.key", kp)
    reg = Registry(workdir / "hub.sqlite", create_for_peer=b"hub")
    try:
        reg.add_peer_key(kp.pub, str(workdir / "hub.key"))
        bundles = [provision_device(reg, n.encode(), DEFAULT_SUITE, {"kind": "mqtt"})[1] for n in names]
    finally:
        reg.close()
    write_private_file(workdir / "hub.mqtt", broker.passwords["hub"].encode())
    text = TEMPLATE.format(registry="hub.sqlite", peer="hub")
    text = text.replace("port = 1883", f"port = {broker.port}", 1)  # [mqtt]; HA stays off
    text = text.replace("port = 8080", "port = 0")  # the dashboard on a free port
    text = text.replace('token_file = "dashboard.token"', 'token_file = ""')  # loopback: none needed
    text = text.replace('gateway_status = ""', f'gateway_status = "{status}"')
    (workdir / "hub.toml").write_text(text)
    return workdir / "hub.toml", bundles


def run_demo(sensors: int = 3, seconds: float | None = None, interval: float = 1.0,
             echo: Callable[[str], None] = click.echo, as_json: bool = False,
             keep: bool = False, stop: threading.Event | None = None) -> int:
    """Run the demo; returns 0 if the hub stored readings from every sensor
    and refused both forgeries (when the run was long enough to make them),
    else 1. Raises ``gateway.broker.BrokerError`` if Mosquitto is missing or
    does not start, ``HubError`` or ``DashboardError`` if the hub cannot."""
    from device.counter import Msg1Counter, NonpersistingCounterStore
    from device.delivery import Outbox
    from gateway.broker import LocalBroker
    from gateway.config import GatewayConfig
    from gateway.envelope import KIND_NAMES
    from gateway.logs import JsonLog
    from gateway.runner import Gateway
    from moteseal.crypto.backend_nacl import NaclBackend
    from moteseal.hub.config import load
    from moteseal.hub.service import Hub
    from moteseal.keys.provision import device_session
    from moteseal.links.mqtt_link import MqttLink
    from moteseal.sim.simulate import Fleet, SimulatedSensor

    stop = stop or threading.Event()
    out = _Printer(echo, as_json)
    workdir = Path(tempfile.mkdtemp(prefix="moteseal-demo-"))
    os.chmod(workdir, 0o700)
    names = [f"sensor-{i + 1:02d}" for i in range(sensors)]
    broker = LocalBroker(workdir / "broker")
    gateway: Gateway | None = None
    hub: Hub | None = None
    attacker: _Attacker | None = None
    links: list[MqttLink] = []
    threads: list[threading.Thread] = []
    stored: dict[str, int] = {n: 0 for n in names}
    url = ""
    log_file = open(workdir / "gateway.log", "a", buffering=1)
    out.header()
    try:
        broker.add("gateway", "gateway")
        broker.add("hub", "device")
        for name in names:
            broker.add(name, "device")
        broker.start()
        out.line("broker", f"Mosquitto on 127.0.0.1:{broker.port}, {len(names) + 2} accounts "
                           f"with ACLs", {"event": "broker", "port": broker.port})

        cfg = GatewayConfig(name="demo")
        cfg.mqtt.port = broker.port
        cfg.mqtt.username = "gateway"
        cfg.mqtt.password = broker.passwords["gateway"]
        cfg.mqtt.client_id = "moteseal-gateway-demo"
        cfg.routes = {"mqtt": ["hub", "sensor-*"]}
        cfg.status_file = str(workdir / "gateway-status.json")
        cfg.status_interval = 1.0
        gateway = Gateway(cfg, JsonLog(log_file, level="info"))

        def saw(header: Any, size: int, link: str) -> None:
            kind = KIND_NAMES[header.kind]
            out.line("gateway", f"{header.src + ' > ' + header.dst:<24} {kind:<4} {size:4d} B",
                     {"event": "relayed", "src": header.src, "dst": header.dst,
                      "kind": kind, "size": size})

        gateway.relay.on_forward = saw
        attacker = _Attacker(gateway.relay, out)
        gateway.start()
        if not gateway.wait_connected(10):
            raise click.ClickException("the gateway did not connect to the broker")
        out.line("gateway", "relaying: it sees ids, kinds and sizes, never a key",
                 {"event": "gateway_ready"})

        hub_toml, bundles = _make_hub_files(workdir, names, broker, Path(cfg.status_file))

        def hub_report(r: dict[str, Any]) -> None:
            ev = r["event"]
            if ev == "telemetry":
                reading = r.get("reading") or {}
                stored[r["device"]] = stored.get(r["device"], 0) + 1
                seq = (r.get("delivery") or {}).get("seq", reading.get("seq", "-"))
                out.line("hub", f"{r['device']:<10} #{seq:<4} {format_reading(reading)}",
                         {"event": "decrypted", "device": r["device"], "via": r["via"],
                          "reading": reading})
            elif attacker is not None and (what := attacker.judged(r)):
                why = attacker.verdicts[what]
                out.line("hub", f"{r.get('device') or '?':<10} {what} envelope refused: {why}",
                         {"event": "refused", "what": what, "device": r.get("device"),
                          "error": why, "outcome": ev})
            elif ev == "command_sent":
                out.line("hub", f"{r['device']:<10} command {r.get('id')} sent, {r.get('size')} B",
                         {"event": ev, "device": r["device"]})
            elif ev == "duplicate":
                out.line("hub", f"{r['device']:<10} #{r.get('seq')} again: acknowledged, not stored",
                         {"event": "hub_duplicate", "device": r["device"]})
            elif ev in ("hint_sent", "refused", "rejected", "held", "store_failed"):
                out.line("hub", f"{r.get('device') or '?':<10} {ev.replace('_', ' ')} "
                                f"{r.get('error', '')}".rstrip(),
                         {"event": "hub_" + ev, "device": r.get("device")})

        hub = Hub(load(hub_toml), on_report=hub_report).start()
        url = hub.dashboard.url
        out.line("hub", f"dashboard at {url}",
                 {"event": "dashboard", "url": url})

        backend = NaclBackend()
        fleet = Fleet()
        for i, (name, bundle) in enumerate(zip(names, bundles)):
            session = device_session(backend, bundle, Msg1Counter(NonpersistingCounterStore()))
            sensor = SimulatedSensor(session, None, interval, seed=i,  # type: ignore[arg-type]
                                     outbox=Outbox(8))
            lk = MqttLink(name, "127.0.0.1", broker.port, username=name,
                          password=broker.passwords[name], on_envelope=fleet.deliver(sensor))
            links.append(lk)
            sensor.link = lk.start()
            fleet.add(sensor, stagger=interval * i / sensors)
        attack_at = min(2.0 + 2 * interval, (seconds or 10.0) / 3)
        for target, args in ((hub.run, (stop,)), (fleet.run, (stop,)),
                             (attacker.run, (stop, attack_at))):
            t = threading.Thread(target=target, args=args, daemon=True)
            t.start()
            threads.append(t)
        out.line("demo", f"{sensors} sensors, one reading per {interval:.1f} s; "
                         + (f"stopping after {seconds:.1f} s" if seconds else "Ctrl-C stops"),
                 {"event": "running", "sensors": sensors, "url": url})
        stop.wait(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for lk in links:
            lk.close()
        if hub is not None:
            hub.close()
        stats = gateway.relay.stats if gateway is not None else None
        if gateway is not None:
            gateway.stop()
        broker.stop()
        log_file.close()
        if keep:
            echo(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    relayed = sum(stats.relayed.values()) if stats else 0
    dropped = sum(stats.dropped.values()) if stats else 0
    verdicts = attacker.verdicts if attacker is not None else {}
    total = sum(stored.values())
    per = ", ".join(f"{k[-2:]}: {v}" for k, v in stored.items())
    out.line("demo", f"stored {total} readings (sensor {per})"[:WIDTH - 23],
             {"event": "summary", "decrypted": total, "per_sensor": stored, "relayed": relayed,
              "dropped": dropped, "refused": sorted(verdicts), "url": url})
    out.line("demo", f"gateway relayed {relayed} envelopes, dropped {dropped}, held no key",
             {"event": "summary_gateway", "relayed": relayed, "dropped": dropped})
    out.line("demo", "refused: " + (", ".join(f"{k} ({v})" for k, v in verdicts.items())
                                              or "none made (the run was too short)"),
             {"event": "summary_forgeries", "refused": verdicts})
    sent = set(attacker.sent) if attacker is not None else set()
    ok = all(stored.values()) and sent <= set(verdicts)  # every forgery made was refused
    return 0 if ok else 1


@click.command("demo")
@click.option("--sensors", type=click.IntRange(1, 50), default=3, show_default=True,
              help="How many simulated sensors.")
@click.option("--seconds", type=click.FloatRange(0.5), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between readings per sensor.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--keep", is_flag=True, help="Keep the scratch directory (broker files, registry, "
                                           "store, gateway log).")
def demo(sensors: int, seconds: float | None, interval: float, as_json: bool, keep: bool) -> None:
    """Watch encrypted telemetry flow: Mosquitto, a gateway, a hub (with its
    dashboard) and simulated sensors on this machine. The gateway lines show
    what the relay sees (ids, kinds, sizes); the hub lines show what only the
    hub can decrypt, and its refusal of a tampered and a replayed envelope.

    \b
    Examples:
      moteseal demo
      moteseal demo --sensors 5 --seconds 20
    """
    from gateway.broker import BrokerError
    from moteseal.hub.dashboard import DashboardError
    from moteseal.hub.service import HubError

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        code = run_demo(sensors, seconds, interval, as_json=as_json, keep=keep, stop=stop)
    except (BrokerError, HubError, DashboardError) as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)

"""``moteseal demo``: the whole system on one machine, in one command.

Starts Mosquitto on a free loopback port with ``broker_config/local.conf``
(accounts and ACLs included), a gateway, a peer and a few simulated sensors,
then shows side by side what the gateway relays (ids, kinds and sizes: all
it can see) and what the peer decrypts (the readings). Stops everything on
Ctrl-C or after ``--seconds``.

Invariants:
- Every process and thread the demo starts is stopped in its ``finally``,
  and its scratch directory (broker files, gateway log) is removed unless
  ``--keep`` is given.
- Keys and PSKs live only in this process's memory; nothing secret is printed.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["run_demo", "demo"]


class _Printer:
    def __init__(self, echo: Callable[[str], None], as_json: bool) -> None:
        self.echo = echo
        self.as_json = as_json
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def line(self, who: str, text: str, record: dict[str, Any]) -> None:
        with self.lock:
            if self.as_json:
                self.echo(json.dumps({"who": who, **record}, sort_keys=True))
            else:
                self.echo(f"{time.monotonic() - self.t0:6.2f}s  {who:<8} {text}")


def run_demo(sensors: int = 3, seconds: float | None = None, interval: float = 1.0,
             echo: Callable[[str], None] = click.echo, as_json: bool = False,
             keep: bool = False, stop: threading.Event | None = None) -> int:
    """Run the demo; returns 0 if the peer decrypted readings from every
    sensor, else 1. Raises ``gateway.broker.BrokerError`` if Mosquitto is
    missing or does not start."""
    from moteseal.crypto.backend_nacl import NaclBackend
    from device.counter import Msg1Counter, NonpersistingCounterStore
    from moteseal.links.mqtt_link import MqttLink
    from moteseal.peer.listen import PeerListener
    from device.peer import NonpersistingDirectory, PeerSessions
    from device.session import DeviceSession
    from moteseal.sim.simulate import Fleet, SimulatedSensor
    from gateway.broker import LocalBroker
    from gateway.config import GatewayConfig
    from gateway.envelope import KIND_NAMES
    from gateway.logs import JsonLog
    from gateway.runner import Gateway

    stop = stop or threading.Event()
    out = _Printer(echo, as_json)
    workdir = Path(tempfile.mkdtemp(prefix="moteseal-demo-"))
    names = [f"sensor-{i + 1:02d}" for i in range(sensors)]
    broker = LocalBroker(workdir / "broker")
    gateway: Gateway | None = None
    links: list[MqttLink] = []
    threads: list[threading.Thread] = []
    reports: list[dict[str, Any]] = []
    log_file = open(workdir / "gateway.log", "a", buffering=1)
    try:
        broker.add("gateway", "gateway")
        broker.add("hub", "device")
        for name in names:
            broker.add(name, "device")
        broker.start()
        out.line("broker", f"Mosquitto on 127.0.0.1:{broker.port} (broker_config/local.conf, "
                           f"ACLs for {len(names) + 2} accounts)", {"event": "broker", "port": broker.port})

        cfg = GatewayConfig(name="demo")
        cfg.mqtt.port = broker.port
        cfg.mqtt.username = "gateway"
        cfg.mqtt.password = broker.passwords["gateway"]
        cfg.mqtt.client_id = "moteseal-gateway-demo"
        cfg.routes = {"mqtt": ["hub", "sensor-*"]}
        gateway = Gateway(cfg, JsonLog(log_file, level="info"))

        def saw(header: Any, size: int, link: str) -> None:
            kind = KIND_NAMES[header.kind]
            out.line("gateway", f"{header.src:<10} -> {header.dst:<10} {kind:<4} {size:4d} B  "
                                f"(ciphertext; routed by header)",
                     {"event": "relayed", "src": header.src, "dst": header.dst,
                      "kind": kind, "size": size})

        gateway.relay.on_forward = saw
        gateway.start()
        if not gateway.wait_connected(10):
            raise click.ClickException("the gateway did not connect to the broker")
        out.line("gateway", "relaying (sees ids, kinds and sizes only)", {"event": "gateway_ready"})

        backend = NaclBackend()
        peer_priv, peer_pub = backend.generate_keypair()
        directory = NonpersistingDirectory([(peer_priv, peer_pub)])
        psks = {name: backend.random_bytes(32) for name in names}
        for name, psk in psks.items():
            directory.add(name.encode(), psk)

        def link(name: str, **kw: Any) -> MqttLink:
            lk = MqttLink(name, "127.0.0.1", broker.port, username=name,
                          password=broker.passwords[name], **kw)
            links.append(lk)
            return lk.start()

        def peer_report(r: dict[str, Any]) -> None:
            reports.append(r)
            if r["event"] == "telemetry":
                reading = r.get("reading") or {}
                text = "  ".join(f"{k}={v}" for k, v in sorted(reading.items()))
                out.line("peer", f"{r['device']:<10} decrypted ({r['via']}): {text}",
                         {"event": "decrypted", "device": r["device"], "via": r["via"],
                          "reading": reading})
            else:
                out.line("peer", f"{r.get('device', '?'):<10} {r['event']}", r)

        peer = PeerListener(PeerSessions(backend, b"hub", directory), link("hub"), peer_report)
        fleet = Fleet()
        for i, name in enumerate(names):
            session = DeviceSession(backend, name.encode(), b"hub", peer_pub, psks[name],
                                    Msg1Counter(NonpersistingCounterStore()))
            sensor = SimulatedSensor(session, None, interval, seed=i)  # type: ignore[arg-type]
            sensor.link = link(name, on_envelope=fleet.deliver(sensor))
            fleet.add(sensor, stagger=interval * i / sensors)
        for target in (peer.run, fleet.run):
            t = threading.Thread(target=target, args=(stop,), daemon=True)
            t.start()
            threads.append(t)
        out.line("demo", f"{sensors} sensors sending every {interval:g} s; "
                         + (f"stopping after {seconds:g} s" if seconds else "Ctrl-C stops"),
                 {"event": "running", "sensors": sensors})
        stop.wait(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for lk in links:
            lk.close()
        stats = gateway.relay.stats if gateway is not None else None
        if gateway is not None:
            gateway.stop()
        broker.stop()
        log_file.close()
        if keep:
            echo(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    decrypted = [r for r in reports if r["event"] == "telemetry"]
    per_sensor = {n: sum(1 for r in decrypted if r["device"] == n) for n in names}
    relayed = sum(stats.relayed.values()) if stats else 0
    dropped = sum(stats.dropped.values()) if stats else 0
    out.line("demo", f"done: the peer decrypted {len(decrypted)} readings "
                     f"({', '.join(f'{k}: {v}' for k, v in per_sensor.items())}); the gateway "
                     f"relayed {relayed} envelopes and dropped {dropped}; "
                     "it never held a key", {"event": "summary", "decrypted": len(decrypted),
                                             "per_sensor": per_sensor, "relayed": relayed,
                                             "dropped": dropped})
    return 0 if all(per_sensor.values()) else 1


@click.command("demo")
@click.option("--sensors", type=click.IntRange(1, 50), default=3, show_default=True,
              help="How many simulated sensors.")
@click.option("--seconds", type=click.FloatRange(0.5), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between readings per sensor.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--keep", is_flag=True, help="Keep the scratch directory (broker files, gateway log).")
def demo(sensors: int, seconds: float | None, interval: float, as_json: bool, keep: bool) -> None:
    """Watch encrypted telemetry flow: Mosquitto, a gateway, a peer and
    simulated sensors on this machine. The gateway column shows what the relay
    sees (ids, kinds, sizes); the peer column shows what only the peer can
    decrypt.

    \b
    Examples:
      moteseal demo
      moteseal demo --sensors 5 --seconds 20
    """
    from gateway.broker import BrokerError

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        code = run_demo(sensors, seconds, interval, as_json=as_json, keep=keep, stop=stop)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)

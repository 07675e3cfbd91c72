"""The peer on CPython: answer handshakes and decrypt telemetry from MQTT.

``PeerListener`` couples a ``device.session.PeerSessions`` (the responder for
many devices) to the peer's own ``MqttLink``: envelopes arrive on the peer's
down topic, replies (handshake message 2, hints) leave on its up topic and
the gateway routes them by ``dst``. One thread (``run``) touches the
sessions.

Invariants:
- Every envelope yields exactly one report: ``telemetry`` (decrypted, from a
  message 1 or a data envelope), ``hint_sent`` (the device's session is
  unknown here, e.g. after a peer restart; the device re-handshakes), or
  ``refused`` / ``rejected`` with the error's class and reason. Bad bytes
  never stop the listener.
- Reports hold ids, sizes, kinds and decrypted readings, never a key, a PSK
  or ciphertext.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from device.errors import RemoteError
from moteseal.links.mqtt_link import MqttLink
from device.peer import PeerSessions
from moteseal.sim.simulate import decode_reading, describe_payload

__all__ = ["PeerListener", "format_report"]

Report = dict[str, Any]


class PeerListener:
    """Drive ``sessions`` from ``link``; hand each report to ``on_report``."""

    def __init__(self, sessions: PeerSessions, link: MqttLink,
                 on_report: Callable[[Report], None],
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.link = link
        self.on_report = on_report
        self.clock = clock
        self.wall_clock = wall_clock
        self.counts = {"telemetry": 0, "handshakes": 0, "hints": 0, "refused": 0, "rejected": 0}
        self._lock = threading.Lock()

    def handle(self, data: bytes) -> Report:
        """Process one envelope; returns (and reports) what it was."""
        with self._lock:
            now = self.clock()
            try:
                got = self.sessions.receive(data, now)
            except RemoteError as exc:
                reply = getattr(exc, "reply", None)
                if reply is not None:
                    self.link.send(reply)
                    self.counts["refused"] += 1
                    report = {"event": "refused", "error": type(exc).__name__,
                              "reason": getattr(exc, "reason", ""), "size": len(data)}
                else:
                    self.counts["rejected"] += 1
                    report = {"event": "rejected", "error": type(exc).__name__, "size": len(data)}
                return self._report(report)
            device = got.device_id.decode("ascii", "replace")
            if got.reply is not None:
                self.link.send(got.reply)
            if got.kind == "hint":
                self.counts["hints"] += 1
                return self._report({"event": "hint_sent", "device": device, "size": len(data)})
            if got.kind == "hs1":
                self.counts["handshakes"] += 1
            self.counts["telemetry"] += 1
            report: Report = {"event": "telemetry", "device": device, "via": got.kind,
                              "size": len(data)}
            reading = decode_reading(got.payload or b"")
            if reading is not None:
                report["reading"] = reading
            else:  # not a CBOR map: shown as text or hex, never only a size
                report["payload"] = describe_payload(got.payload or b"")
            return self._report(report)

    def send(self, device_id: str, payload: bytes) -> bytes:
        """Encrypt ``payload`` to a device on its current session and publish
        it; returns the envelope. Raises ``LocalError`` if there is no session."""
        with self._lock:
            env = self.sessions.send(device_id.encode(), payload, self.clock())
        self.link.send(env)
        return env

    def _report(self, report: Report) -> Report:
        report["ts"] = round(self.wall_clock(), 3)
        try:
            self.on_report(report)
        except Exception:
            pass  # a broken printer must not stop decryption
        return report

    def run(self, stop: threading.Event) -> None:
        """Handle envelopes until ``stop`` is set."""
        while not stop.is_set():
            data = self.link.recv(timeout=0.2)
            if data is not None:
                self.handle(data)


def format_report(r: Report) -> str:
    """One human-readable line for a report."""
    ev = r["event"]
    if ev == "telemetry":
        reading = r.get("reading")
        if reading is not None:  # every field, in the device's order
            body = "  ".join(f"{k}={v}" for k, v in reading.items()) or "{}"
        else:
            body = "  ".join(f"{k}={v!r}" if k == "text" else f"{k}={v}"
                             for k, v in r.get("payload", {}).items()) or "(empty)"
        return f"{r['device']:<16} {r['via']:<4} {body}"
    if ev == "hint_sent":
        return f"{r['device']:<16} unknown session: asked it to handshake again"
    return f"{'?':<16} {ev}: {r.get('error', '')} {r.get('reason', '')}".rstrip()


# ---------------------------------------------------------------- CLI

import json as _json  # noqa: E402
import signal as _signal  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import click  # noqa: E402


@click.group("peer")
def peer_group() -> None:
    """The peer: the responder that decrypts telemetry."""


@peer_group.command("listen")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False), default=None,
              help="The peer's registry (default: <[registry] dir>/<peer>.sqlite).")
@click.option("--peer", default=None, help="Peer id (default: [registry] peer in the config).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="moteseal config.toml (see `moteseal provision --help`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Broker host.")
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--username", default=None, help="MQTT account (default: the peer id).")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the MQTT password.")
@click.option("--tls", is_flag=True)
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None)
@click.option("--suite", default=None, help="Noise suite (default: the library default).")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def listen(registry_path: str | None, peer: str | None, config_path: str | None, host: str,
           port: int, username: str | None, password_file: str | None, tls: bool,
           ca_file: str | None, suite: str | None, seconds: float | None, as_json: bool) -> None:
    """Answer handshakes and print decrypted telemetry, one line per message.

    Private keys come from the registry's key files (a passphrase-protected
    key file reads the passphrase from $MOTESEAL_PASSPHRASE). Nothing secret
    is printed.

    \b
    Example:
      moteseal peer listen --registry hub.sqlite --password-file hub.mqtt --json
    """
    from moteseal.crypto.backend_nacl import NaclBackend
    from moteseal.config import load_config
    from device.errors import LocalError
    from moteseal.keys.keyfile import passphrase_from_env
    from moteseal.cli.keys import open_registry
    from moteseal.links.mqtt_link import LinkError
    from device.session import DEFAULT_SUITE

    try:
        reg = open_registry(load_config(config_path), peer, registry_path,
                            passphrase=passphrase_from_env())
        reg.check_statics()
    except LocalError as exc:
        raise click.ClickException(str(exc)) from None
    peer_id = reg.peer_id.decode()
    password = _Path(password_file).read_text().strip() if password_file else None
    lock = threading.Lock()

    def show(r: Report) -> None:
        with lock:
            click.echo(_json.dumps(r, sort_keys=True) if as_json else format_report(r))

    sessions = PeerSessions(NaclBackend(), reg.peer_id, reg, suite or DEFAULT_SUITE)
    link = MqttLink(peer_id, host, port, username=username or peer_id, password=password,
                    tls=tls, ca_file=ca_file)
    try:
        link.start()
    except LinkError as exc:
        reg.close()
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, lambda *_: stop.set())
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    listener = PeerListener(sessions, link, show)
    if not as_json:
        click.echo(f"peer {peer_id} listening on {host}:{port} (Ctrl-C stops)", err=True)
    try:
        listener.run(stop)
    finally:
        link.close()
        reg.close()

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
  ``refused`` / ``rejected`` with the error's class and reason,
  ``unstored`` (the registry could not store the message-1 counter, e.g. a
  full disk: refused, no reply, the device retries) or ``held`` (a restored
  device's 0-RTT payload, reported as ``telemetry`` via ``hs1`` once the
  device confirms the session). Bad bytes and a registry that cannot write
  never stop the listener; it recovers when the registry can write again.
- Sessions end within ``recheck`` (0.5 s) of a revocation, re-provisioning
  or key retirement made by any process (``device.peer`` Rule 4), and after
  ``max_age`` seconds (``peer listen``: ``[peer] max_session_age``).
- Reports hold ids, sizes, kinds and decrypted readings, never a key, a PSK
  or ciphertext.
- Group commit: ``run`` handles every envelope already waiting (up to
  ``MAX_BATCH``) with one ``handle_many``, whose readings are stored in one
  transaction; their acknowledgements leave only after it commits
  (``moteseal.peer.delivery`` Rules 1 and 4). Nothing waits for a batch to
  fill: under light load a batch is one envelope.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from device.errors import LocalError, RemoteError, StorageError
from moteseal.peer.delivery import Inbox, ReadingStore, StoreError
from moteseal.links.mqtt_link import MqttLink
from device.peer import PeerSessions
from moteseal.sim.simulate import decode_reading, describe_payload

__all__ = ["PeerListener", "format_report"]

Report = dict[str, Any]
MAX_BATCH = 64  # envelopes handled (readings committed) together by run(), at most


class PeerListener:
    """Drive ``sessions`` from ``link``; hand each report to ``on_report``.
    Thread-safe: ``handle`` and ``send`` serialise on one lock."""

    def __init__(self, sessions: PeerSessions, link: MqttLink,
                 on_report: Callable[[Report], None],
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 inbox: Inbox | None = None) -> None:
        self.sessions = sessions
        # Framed readings are deduplicated, stored and acknowledged through
        # the inbox (exactly once, in order: moteseal/peer/delivery.py).
        self.inbox = inbox if inbox is not None else Inbox(ReadingStore(":memory:"))
        self.link = link
        self.on_report = on_report
        self.clock = clock
        self.wall_clock = wall_clock
        self.counts = {"telemetry": 0, "handshakes": 0, "hints": 0, "refused": 0, "rejected": 0,
                       "duplicates": 0, "store_errors": 0, "lost": 0, "unstored": 0, "held": 0,
                       "command_acks": 0}
        self.acks = 0  # acknowledgements sent, and the seconds they took (metrics)
        self.ack_seconds = 0.0
        self._lock = threading.Lock()
        self.max_batch = MAX_BATCH

    def handle(self, data: bytes) -> Report:
        """Process one envelope; returns (and reports) what it was."""
        return self.handle_many([data])[-1]

    def handle_many(self, datas: list[bytes]) -> list[Report]:
        """Process envelopes in order; returns (and reports) what each was.
        The readings among them are stored in one transaction and
        acknowledged after its commit (``moteseal.peer.delivery`` Rule 4)."""
        with self._lock:
            now = self.clock()
            reports: list[Report | None] = [None] * len(datas)
            # (index, device id, via, payload, size): decrypted, for the inbox.
            pending: list[tuple[int, bytes, str, bytes | None, int]] = []
            for k, data in enumerate(datas):
                reports[k] = self._receive(k, data, now, pending)
            for k, report in self._telemetry(pending, now):
                reports[k] = report
            return [r for r in reports if r is not None]

    def _receive(self, k: int, data: bytes, now: float,
                 pending: list[tuple[int, bytes, str, bytes | None, int]]) -> Report | None:
        # The report of an envelope that carries no payload; a payload is
        # queued in ``pending`` (None returned) for the inbox.
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
            report["device"] = _sender(data)
            return self._report(report)
        except StorageError:
            # Fail closed: no message 2 without a stored counter (Rule 2).
            self.counts["unstored"] += 1
            return self._report({"event": "unstored", "error": "StorageError",
                                 "reason": "unstored", "size": len(data)})
        device = got.device_id.decode("ascii", "replace")
        if got.reply is not None:
            self.link.send(got.reply)
        if got.kind == "hint":
            self.counts["hints"] += 1
            return self._report({"event": "hint_sent", "device": device, "size": len(data)})
        if got.kind == "hs1":
            self.counts["handshakes"] += 1
            if got.payload is None:  # a restored device: held until it confirms
                self.counts["held"] += 1
                return self._report({"event": "held", "device": device, "size": len(data)})
        if got.early is not None:
            pending.append((k, got.device_id, "hs1", got.early, len(data)))
        pending.append((k, got.device_id, got.kind, got.payload, len(data)))
        return None

    def _telemetry(self, pending: list[tuple[int, bytes, str, bytes | None, int]],
                   now: float) -> list[tuple[int, Report]]:
        """Decrypted payloads: through the inbox (stored once, in one
        transaction, and acknowledged if framed readings), then reported."""
        if not pending:
            return []
        started = time.perf_counter()
        try:
            accs = self.inbox.accept_many([(p[1].decode("ascii", "replace"), p[3] or b"")
                                           for p in pending])
        except StoreError as exc:  # fail closed: no ack, the devices send them again
            out = []
            for k, device_id, _via, _payload, _size in pending:
                self.counts["store_errors"] += 1
                out.append((k, self._report({"event": "store_failed",
                                             "device": device_id.decode("ascii", "replace"),
                                             "error": str(exc)})))
            return out
        return [(p[0], self._accepted(p[1], p[2], p[4], acc, now, started))
                for p, acc in zip(pending, accs)]

    def _accepted(self, device_id: bytes, via: str, size: int, acc: Any, now: float,
                  started: float) -> Report:
        device = device_id.decode("ascii", "replace")
        report = getattr(acc, "report", None)  # a transfer status (moteseal/hub/push.py)
        if report is not None:
            return self._report(dict(report, device=device))
        if acc.command_ack >= 0:
            self.counts["command_acks"] += 1
            return self._report({"event": "command_acked", "device": device, "id": acc.command_ack})
        if acc.ack is not None:
            try:
                self.link.send(self.sessions.send(device_id, acc.ack, now))
            except LocalError:
                pass  # no session to answer on: the device resends, the ack follows then
            # Acknowledgement lag: from the decrypted reading to its ack on the
            # wire (the store's durable commit is most of it).
            self.ack_seconds += time.perf_counter() - started
            self.acks += 1
        if acc.body is None:
            self.counts["duplicates"] += 1
            return self._report({"event": "duplicate", "device": device, "seq": acc.seq})
        self.counts["telemetry"] += 1
        self.counts["lost"] += acc.lost
        report: Report = {"event": "telemetry", "device": device, "via": via, "size": size}
        if acc.seq >= 0:
            report["delivery"] = {"boot": acc.boot, "seq": acc.seq, "lost": acc.lost}
        reading = decode_reading(acc.body)
        if reading is not None:
            report["reading"] = reading
        else:  # not a CBOR map: shown as text or hex, never only a size
            report["payload"] = describe_payload(acc.body)
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
        """Handle envelopes until ``stop`` is set: each time, every envelope
        already waiting (up to ``max_batch``) together, so that their
        readings share one commit; under light load a batch is one envelope
        and nothing waits for company."""
        while not stop.is_set():
            data = self.link.recv(timeout=0.2)
            if data is None:
                continue
            batch = [data]
            while len(batch) < self.max_batch:
                more = self.link.recv(timeout=0.0)
                if more is None:
                    break
                batch.append(more)
            self.handle_many(batch)


def format_report(r: Report) -> str:
    """One human-readable line for a report: UTC time, device, what happened."""
    ts = r.get("ts")
    when = time.strftime("%H:%M:%S", time.gmtime(ts)) + "Z" if ts is not None else "-"
    ev = r["event"]
    if ev == "telemetry":
        reading = r.get("reading")
        if reading is not None:  # every field, in the device's order
            body = "  ".join(f"{k}={v}" for k, v in reading.items()) or "{}"
        else:
            body = "  ".join(f"{k}={v!r}" if k == "text" else f"{k}={v}"
                             for k, v in r.get("payload", {}).items()) or "(empty)"
        return f"{when} {r['device']:<16} {r['via']:<4} {body}"
    if ev == "hint_sent":
        return f"{when} {r['device']:<16} unknown session: asked it to handshake again"
    if ev == "held":
        return f"{when} {r['device']:<16} handshake after a registry restore: reading held until it confirms"
    if ev == "unstored":
        return f"{when} {'?':<16} registry cannot write (disk full?): message 1 refused, the device retries"
    if ev == "duplicate":
        return f"{when} {r['device']:<16} duplicate of reading {r.get('seq')}: acknowledged again"
    if ev == "command_sent":
        return f"{when} {r['device']:<16} command {r.get('id')} sent ({r.get('size')} bytes)"
    if ev == "command_acked":
        return f"{when} {r['device']:<16} command {r.get('id')} acknowledged by the device"
    line = f"{when} {r.get('device') or '?':<16} {ev}: {r.get('error', '')} {r.get('reason', '')}".rstrip()
    if r.get("note"):
        line += f" ({r['note']})"
    return line


def _sender(data: bytes) -> str | None:
    """The envelope's source id, for naming a refused device in the output;
    None if the bytes do not even decode as an envelope."""
    from device import envelope as E
    try:
        env = E.Envelope().decode_into(data, len(data), len(data))
    except (RemoteError, ValueError, IndexError):
        return None
    return bytes(env.src).decode("ascii", "replace")


# ---------------------------------------------------------------- CLI

import json as _json  # noqa: E402
from moteseal.cli.errors import stop_event  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import click  # noqa: E402


@click.group("peer")
def peer_group() -> None:
    """The peer: the responder that decrypts telemetry.

    \b
    Examples:
      moteseal peer listen --peer hub1 --password-file hub1.mqtt
      moteseal peer listen --registry hub1.sqlite --json --seconds 60
    """


def _read_password(path: str | None) -> str | None:
    """The MQTT password from ``path`` (first line). Raises ``ConfigError``."""
    from moteseal.config import ConfigError

    if path is None:
        return None
    try:
        text = _Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"--password-file {path}: no such file "
                          "(`moteseal broker add-device ID --password-file FILE` writes it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--password-file {path}: cannot read it ({exc})") from None
    return text.strip()


def _check_suite(suite: str | None) -> str:
    from device.session import DEFAULT_SUITE, SESSION_SUITES

    if suite is None:
        return DEFAULT_SUITE
    if suite not in SESSION_SUITES:
        raise click.BadParameter(f"{suite!r}: a peer runs one of {', '.join(SESSION_SUITES)}",
                                 param_hint="--suite")
    return suite


def _suite_note(reg: Any, device: str | None, suite: str) -> str | None:
    """Why a device's handshake cannot authenticate if the registry says it
    was provisioned for another suite than this peer runs."""
    if not device:
        return None
    try:
        rec = reg.get(device.encode())
    except Exception:  # unknown device, closed registry: nothing to add
        return None
    if rec.suite != suite:
        return f"{device} is provisioned for {rec.suite}, this peer runs {suite}: restart it with --suite {rec.suite}"
    return None


@peer_group.command("listen")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False), default=None,
              help="The peer's registry (default: <[registry] dir>/<peer>.sqlite).")
@click.option("--peer", default=None, help="Peer id (default: [registry] peer in the config).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="moteseal config.toml (see `moteseal provision --help`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Broker host.")
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True,
              help="Broker port (8883 for the TLS listener of broker_config/mosquitto.conf).")
@click.option("--username", default=None, help="MQTT account (default: the peer id).")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the MQTT password (written by `moteseal broker add-device`).")
@click.option("--tls", is_flag=True, help="Connect to the broker with TLS (with --ca-file to verify it).")
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None,
              help="CA certificate that signed the broker's (from `moteseal broker certs`); implies --tls.")
@click.option("--suite", default=None,
              help="Noise suite the devices were provisioned for (default: the library default).")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--max-session-age", type=click.IntRange(1), default=None,
              help="Seconds a session may live before the device must handshake again "
                   "(default: [peer] max_session_age, 86400).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), default=None,
              help="SQLite file of delivered readings: each reading is stored and "
                   "acknowledged exactly once, also across peer restarts (default: in "
                   "memory, so after a restart a resent reading may show again).")
def listen(registry_path: str | None, peer: str | None, config_path: str | None, host: str,
           port: int, username: str | None, password_file: str | None, tls: bool,
           ca_file: str | None, suite: str | None, seconds: float | None,
           max_session_age: int | None, as_json: bool, store_path: str | None) -> None:
    """Answer handshakes and print decrypted telemetry, one line per message.

    Each line starts with the UTC time, then the device. Private keys come
    from the registry's key files (a passphrase-protected key file reads the
    passphrase from $MOTESEAL_PASSPHRASE). A refused device is named with
    the reason; if the registry has it under another suite than --suite,
    the line says so. Nothing secret is printed.

    \b
    Examples:
      moteseal peer listen --peer hub1 --password-file hub1.mqtt
      moteseal peer listen --registry hub1.sqlite --password-file hub1.mqtt --json
      moteseal peer listen --peer hub1 --host pi.local --port 8883 --ca-file ca.crt \\
          --password-file hub1.mqtt
    """
    from moteseal.crypto.backend_nacl import NaclBackend
    from moteseal.config import load_config
    from moteseal.keys.keyfile import PASSPHRASE_ENV, PassphraseRequired, passphrase_from_env
    from moteseal.cli.keys import open_registry

    suite = _check_suite(suite)
    password = _read_password(password_file)
    reg = open_registry(load_config(config_path), peer, registry_path,
                        passphrase=passphrase_from_env())
    try:
        reg.check_statics()
    except PassphraseRequired:
        reg.close()
        raise PassphraseRequired(f"the peer's key file is encrypted: set {PASSPHRASE_ENV} "
                                 "(peer listen reads the passphrase from it)") from None
    except BaseException:
        reg.close()
        raise
    peer_id = reg.peer_id.decode()
    lock = threading.Lock()

    def show(r: Report) -> None:
        if r["event"] == "refused" and r.get("reason") == "auth":
            note = _suite_note(reg, r.get("device"), suite)
            if note:
                r["note"] = note
        with lock:
            click.echo(_json.dumps(r, sort_keys=True) if as_json else format_report(r))

    max_age = max_session_age or load_config(config_path).get("peer", "max_session_age")
    sessions = PeerSessions(NaclBackend(), reg.peer_id, reg, suite, max_age=max_age)
    link = MqttLink(peer_id, host, port, username=username or peer_id, password=password,
                    tls=tls or ca_file is not None, ca_file=ca_file)
    try:
        link.start()
    except BaseException:
        reg.close()
        raise  # a LinkError: exit 1 with its message (moteseal.cli.errors)
    stop = stop_event(seconds)
    try:
        inbox = Inbox(ReadingStore(store_path)) if store_path else None
    except StoreError:
        link.close()
        reg.close()
        raise  # exit 2 with its message (moteseal.cli.errors)
    listener = PeerListener(sessions, link, show, inbox=inbox)
    if not as_json:
        click.echo(f"peer {peer_id} listening on {host}:{port} (Ctrl-C stops)", err=True)
    try:
        listener.run(stop)
    finally:
        link.close()
        reg.close()

"""The soak's moving parts (``bench/soak.py``): a counting peer directory,
links that account for every publish, a serial sensor link and a gateway
process the soak can kill and restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from moteseal.links.mqtt_link import MqttLink  # noqa: E402
from device.peer import NonpersistingDirectory  # noqa: E402
from gateway.broker import LocalBroker  # noqa: E402

PEER = "hub"


def _log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CountingDirectory(NonpersistingDirectory):
    """The peer's directory; remembers every message-1 counter it accepted,
    in order, per device."""

    def __init__(self, statics: list[tuple[bytes, bytes]]) -> None:
        super().__init__(statics)
        self.accepted: dict[bytes, list[int]] = defaultdict(list)

    def counter_set(self, device_id: bytes, value: int) -> None:
        self.accepted[bytes(device_id)].append(value)
        super().counter_set(device_id, value)


def _puback(info: Any) -> bool:
    """True once the broker acknowledged this QoS-1 PUBLISH. paho's
    ``is_published()`` raises for a message queued while disconnected
    (``rc`` stays NO_CONN even after paho sends it on reconnect and gets the
    PUBACK), so read the flag paho sets on PUBACK."""
    if info is True or info is False:
        return info
    with info._condition:
        return bool(info._published)


class AccountingLink(MqttLink):
    """An ``MqttLink`` that remembers the last publish's ``MQTTMessageInfo``
    so the harness can tie it to the reading the sensor just sent."""

    last: Any = None

    def send(self, envelope: bytes):  # type: ignore[override]
        self.last = super().send(envelope)
        return self.last


class SerialSensorLink:
    """A serial cable for a ``SimulatedSensor``: ``send(env)`` frames the
    envelope onto the pty; a pulled cable is a ``LinkDown``, which the
    sensor sees as a failed send (``last`` is False)."""

    def __init__(self, path: str, on_envelope: Callable[[bytes], None]) -> None:
        from moteseal.links.serial_link import SerialLink
        self.link = SerialLink(path, on_frame=on_envelope, answer_hello=True,
                               backoff_initial=0.05, backoff_max=0.5, name="serial-sensor")
        self.last: bool | None = None

    def start(self) -> "SerialSensorLink":
        self.link.start()
        return self

    def send(self, envelope: bytes) -> None:
        from moteseal.links.serial_link import LinkDown
        try:
            self.link.send(envelope)
            self.last = True
        except LinkDown:
            self.last = False

    def close(self) -> None:
        self.link.close()


class GatewayProc:
    """``moteseal gateway run`` as a child process."""

    def __init__(self, workdir: Path, broker: LocalBroker, serial_port: Path | None,
                 serial_devices: list[str], share_group: str = "") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.status_file = workdir / "status.json"
        (workdir / "gw.password").write_text(broker.passwords["gw"])
        serial = ""
        if serial_port is not None:
            serial = f"""
[[serial]]
name = "uart0"
port = "{serial_port}"
baudrate = 115200
devices = {json.dumps(serial_devices)}
queue = "uart0-queue.sqlite"
queue_max = 1000
"""
        self.config = workdir / "gateway.toml"
        self.config.write_text(f"""
[gateway]
name = "soak"
status_file = "status.json"
status_interval = 0.2

[mqtt]
host = "127.0.0.1"
port = {broker.port}
username = "gw"
password_file = "gw.password"
client_id = "moteseal-gateway-soak"
share_group = "{share_group}"
share_group_trusted = {"true" if share_group else "false"}
max_inflight = 200

[rate_limit]
rate = 1000.0
burst = 1000.0

[routes]
mqtt = ["{PEER}", "sensor-*", "mp-*"]

[log]
file = "gateway.log"
{serial}""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 30.0) -> None:
        try:
            self.status_file.unlink()
        except FileNotFoundError:
            pass
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moteseal.cli.main", "gateway", "run", "--config", str(self.config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited: " + (self.workdir / "stdout.log").read_text()[-2000:])
            s = self.status()
            if s and s.get("links", {}).get("mqtt", {}).get("connected"):
                return
            time.sleep(0.05)
        raise TimeoutError("gateway did not connect")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def verdict(self: Any) -> dict[str, Any]:
    """``Soak.verdict``: every message accounted for (bench/soak.py's
    docstring says how); ``ok`` is the overall check."""
    with self.lock:
        acked = set(self._acked())
        serial_sent = {k for k, v in self.sent.items() if k[0] == "serial-1" and v is True}
        lost = sorted(k for k in acked if self.delivered[k] == 0)
        dups = sorted(k for k, c in self.delivered.items() if c > 1)
        # Retained readings made while message 2 was awaited go out only
        # as resends (no "sent" event): what a sensor made is every seq
        # below its count.
        made = {n: s.seq for n, s in self.sensors.items()}
        forged = sorted(k for k in self.delivered
                        if k not in self.sent and k[1] >= made.get(k[0], 0))
        late_ok = sum(1 for k in self.failed if self.delivered[k] == 1)
        regress = {d.decode(): v for d, v in self.directory.accepted.items()
                   if any(b <= a for a, b in zip(v, v[1:]))}
        serial_lost = sorted(k for k in serial_sent if self.delivered[k] == 0)
        cuts = [t for i, (t, f) in enumerate(self.fault_log) if f == "done"
                 and i > 0 and self.fault_log[i - 1][1] == "serial_cut"]
        serial_recovered = (not cuts) or any(
            d == "serial-1" and self.sent_at.get((d, q), 0) > cuts[-1]
            for d, q in self.delivered)
        # Each rebooted sensor handshook again and was heard after its last reboot.
        silent = sorted(n for n, first in self.rebooted_at.items()
                        if not any(d == n and q >= first for d, q in self.delivered))
        mp = []
        for boot, summary in enumerate(self.mp_summaries if self.use_mp else [], start=1):
            got = self.mp_delivered[boot]
            row: dict[str, Any] = {"boot": boot, "summary": summary,
                                   "delivered": len(got),
                                   "missing": sorted(set(range(summary["readings"])) - set(got))
                                   if summary else None,
                                   "duplicates": sorted(s for s, c in got.items() if c > 1)}
            if summary is None:
                row["ok"] = False
            else:
                # Retention: every reading it made arrives, once.
                row["ok"] = (not row["duplicates"] and summary.get("evicted") == 0
                             and sorted(got) == list(range(summary["readings"])))
            mp.append(row)
        mp_counters = self.directory.accepted.get(b"mp-1", [])
        evicted = self.evicted + sum(s.outbox.evicted for s in self.sensors.values()
                                     if s.outbox is not None)
        unacked = sum(s.outbox.count() for s in self.sensors.values()
                      if s.outbox is not None)
    result = {
        "devices": len(self.names) + (1 if self.use_serial else 0) + (1 if self.use_mp else 0),
        "faults": dict(self.faults),
        "sent": len(self.sent), "acked": len(acked), "delivered": sum(self.delivered.values()),
        "reported_failed": len(self.failed), "failed_but_arrived_once": late_ok,
        "lost": [list(k) + [self.sent_at.get(k)] for k in lost[:20]], "lost_count": len(lost),
        "fault_log": self.fault_log,
        "duplicates": [list(k) for k in dups[:20]], "forged": [list(k) for k in forged[:20]],
        "counter_regressions": regress,
        "serial_sent": len(serial_sent), "serial_unacknowledged_lost": len(serial_lost),
        "serial_recovered_after_last_cut": serial_recovered,
        "micropython": mp, "micropython_counters": mp_counters,
        "reboots": sum(v - 1 for v in self.boots.values()),
        "silent_after_reboot": silent,
        "evicted": evicted, "unacknowledged_at_end": unacked,
        "stored": len(self.store.readings()),
        "peer_events": dict(self.peer_events),
    }
    result["ok"] = (not lost and not dups and not forged and not regress and not silent
                    and not evicted
                    and (not self.use_serial or serial_recovered)
                    and all(r["ok"] for r in mp)
                    and (not self.use_mp or len(mp_counters) >= 2))
    return result

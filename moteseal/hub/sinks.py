"""Where the hub hands readings on: JSON lines, a Python callback, Home
Assistant (MQTT discovery). Every sink is fed by a ``SinkWorker`` that reads
the store after the sink's persisted cursor (``HubStore`` Rule 2), so a sink
that fails never blocks decryption or another sink and never loses a
reading: it retries from the store, with backoff, and its backlog and errors
show in the hub's metrics.

Nothing secret reaches a sink: a reading's fields are the device's own
plaintext, and the metadata is the device id, sequence and hub time.
"""

from __future__ import annotations

import abc
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from moteseal.hub.store import HubStore

Reading = dict[str, Any]  # {"id", "device", "boot", "seq", "ts", "fields"}


class Sink(abc.ABC):
    """One destination. ``handle(reading)`` raises on failure (the worker
    retries the same reading). Called from the sink's own worker thread."""

    name = "sink"

    @abc.abstractmethod
    def handle(self, reading: Reading) -> None:
        """Hand one reading on; raise if it did not get there."""

    def close(self) -> None:
        pass


class JsonLinesSink(Sink):
    """One JSON object per reading, to stdout (``-``) or appended to a file."""

    name = "jsonl"

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._out: TextIO = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")

    def handle(self, reading: Reading) -> None:
        self._out.write(json.dumps({"device": reading["device"], "seq": reading["seq"],
                                    "boot": reading["boot"], "ts": round(reading["ts"], 3),
                                    "fields": reading["fields"]}, sort_keys=True) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not sys.stdout:
            self._out.close()


class CallbackSink(Sink):
    """The Python API: ``on_reading(device, fields, meta)`` with
    ``meta = {"seq", "boot", "ts", "id"}``. An exception from it is a
    failure: the same reading is offered again."""

    def __init__(self, on_reading: Callable[[str, dict[str, Any], dict[str, Any]], None],
                 name: str = "python") -> None:
        self.on_reading = on_reading
        self.name = name

    def handle(self, reading: Reading) -> None:
        self.on_reading(reading["device"], reading["fields"],
                        {k: reading[k] for k in ("seq", "boot", "ts", "id")})


_OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")


class HomeAssistantSink(Sink):
    """Home Assistant MQTT discovery (home-assistant.io, "MQTT Discovery":
    topic ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``,
    retained so entities return after a Home Assistant restart). One device
    per moteseal device, one ``sensor`` entity per field, with the unit,
    device class and state class of ``field_map(device, field)``. States go
    to ``moteseal/<device>/state`` as one JSON object per reading, retained
    ("MQTT Sensor": a retained state gives the last value at once), and each
    entity picks its field with a ``value_template``. Availability is
    ``moteseal/<device>/availability``: ``online`` on a reading, ``offline``
    after ``offline_after`` seconds without one.
    """

    name = "home_assistant"

    def __init__(self, host: str, port: int, field_map: Callable[[str, str], dict[str, str]],
                 username: str | None = None, password: str | None = None,
                 discovery_prefix: str = "homeassistant", offline_after: float = 900,
                 clock: Callable[[], float] = time.time) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = discovery_prefix
        self.field_map = field_map
        self.offline_after = offline_after
        self.clock = clock
        self._announced: set[tuple[str, str]] = set()
        self._last_seen: dict[str, float] = {}
        self._online: set[str] = set()
        self._connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"moteseal-hub-ha-{id(self):x}",
                        protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        c.on_connect = lambda cl, ud, fl, rc, pr=None: self._connected.set() if not rc.is_failure else None
        c.on_disconnect = lambda *a: self._connected.clear()
        c.reconnect_delay_set(1, 30)
        c.connect_async(host, port, keepalive=30)
        c.loop_start()
        self.client = c

    @staticmethod
    def _oid(text: str) -> str:
        return _OBJECT_ID.sub("_", text)

    def _publish(self, topic: str, payload: str, retain: bool) -> None:
        if not self._connected.wait(5):
            raise ConnectionError("Home Assistant broker not connected")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        if not info.is_published():
            raise ConnectionError("Home Assistant broker did not acknowledge")

    def config_topic(self, device: str, name: str) -> str:
        return f"{self.prefix}/sensor/moteseal_{self._oid(device)}/{self._oid(name)}/config"

    def discovery(self, device: str, name: str) -> dict[str, Any]:
        """The discovery payload of ``device``'s field ``name``."""
        attrs = self.field_map(device, name)
        doc: dict[str, Any] = {
            "name": attrs.get("name", name),
            "unique_id": f"moteseal_{self._oid(device)}_{self._oid(name)}",
            "state_topic": f"moteseal/{device}/state",
            "value_template": "{{ value_json['%s'] }}" % name.replace("'", ""),
            "availability_topic": f"moteseal/{device}/availability",
            "device": {"identifiers": [f"moteseal_{self._oid(device)}"], "name": device,
                       "manufacturer": "moteseal", "model": "end-to-end encrypted sensor"},
        }
        for key in ("unit", "device_class", "state_class"):
            if key in attrs:
                doc["unit_of_measurement" if key == "unit" else key] = attrs[key]
        return doc

    def handle(self, reading: Reading) -> None:
        device = reading["device"]
        for name in reading["fields"]:
            if (device, name) not in self._announced:
                self._publish(self.config_topic(device, name),
                              json.dumps(self.discovery(device, name), sort_keys=True), True)
                self._announced.add((device, name))
        if device not in self._online:
            self._publish(f"moteseal/{device}/availability", "online", True)
            self._online.add(device)
        self._publish(f"moteseal/{device}/state", json.dumps(reading["fields"], sort_keys=True), True)
        self._last_seen[device] = self.clock()

    def expire(self) -> None:
        """Marks devices silent for ``offline_after`` unavailable."""
        now = self.clock()
        for device in [d for d in self._online if now - self._last_seen.get(d, now) >= self.offline_after]:
            self._publish(f"moteseal/{device}/availability", "offline", True)
            self._online.discard(device)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SinkWorker:
    """Feeds one sink from the store (Rule 2 of ``HubStore``): reads after
    the cursor, hands each reading on, advances the cursor after success,
    and on failure waits (1 s doubling to 30 s) and offers the same reading
    again. ``errors`` and ``backlog()`` are for metrics.

    Thread-safe to read from other threads (counters only)."""

    def __init__(self, store: HubStore, sink: Sink, wake: threading.Event | None = None,
                 tick: Callable[[], None] | None = None) -> None:
        self.store = store
        self.sink = sink
        self.errors = 0
        self.delivered = 0
        self.last_error: str | None = None
        self.wake = wake or threading.Event()
        self.tick = tick
        self.thread: threading.Thread | None = None

    def backlog(self) -> int:
        return self.store.backlog(self.sink.name)

    def start(self, stop: threading.Event) -> "SinkWorker":
        self.thread = threading.Thread(target=self.run, args=(stop,), name=f"sink-{self.sink.name}",
                                       daemon=True)
        self.thread.start()
        return self

    def run(self, stop: threading.Event) -> None:
        cursor = self.store.cursor(self.sink.name)
        delay = 1.0
        while not stop.is_set():
            batch = self.store.after(cursor, 200)
            if self.tick is not None:
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - a sink's housekeeping must not stop it
                    pass
            if not batch:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            for reading in batch:
                try:
                    self.sink.handle(reading)
                except Exception as e:  # noqa: BLE001 - any failure: retry from the store
                    self.errors += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:200]
                    stop.wait(delay)
                    delay = min(30.0, delay * 2)
                    break
                delay = 1.0
                cursor = reading["id"]
                self.store.set_cursor(self.sink.name, cursor)
                self.delivered += 1
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            pass


def read_secret(path: Path | None) -> str | None:
    """A password or token from a file (first line); None for no file."""
    if path is None:
        return None
    return path.read_text().strip()

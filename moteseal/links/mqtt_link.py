"""MQTT transport for devices and the peer on CPython (paho-mqtt 2.x).

A link belongs to one id. It publishes envelopes to ``moteseal/v1/up/<id>``
and receives from ``moteseal/v1/down/<id>`` (docs/protocol.md, "MQTT
topics"); the gateway routes between the two by the envelope's ``dst``. The
peer is just another id with its own link.

Invariants:
- QoS 1 both ways and a persistent session (clean_start False, a session
  expiry interval, a fixed client id ``moteseal-<id>``), so the broker
  queues what arrives for a sleeping or disconnected device and delivers it
  on reconnect. QoS 1 may deliver twice; the session layer's replay window
  discards the duplicate.
- The link moves opaque envelope bytes; it holds no key and logs nothing.
- An envelope is acknowledged to the broker (PUBACK, paho's manual_ack)
  only once the application has it: when ``recv`` hands it over, or when
  ``on_envelope`` returns. Until then the broker keeps it, and with Receive
  Maximum = ``max_inflight`` it sends at most that many unacknowledged, so
  a slow or absent reader is backpressure, never loss. The link does not
  rely on the broker honouring Receive Maximum: when the inbox is full,
  paho's network thread waits for ``recv`` to make room (TCP backpressure),
  and a redelivery (DUP) of an envelope still waiting in the inbox is not
  queued a second time.
- The CONNECT announces Maximum Packet Size ``MAX_PACKET_BYTES`` (MQTT 5
  section 3.1.2.11.4), so the broker never sends this link a packet larger
  than one envelope needs: it drops such a message for this client instead
  of making the device download it.
- TCP_NODELAY on the socket: one small envelope must not wait ~40 ms for
  Nagle's algorithm.
- ``hosts`` (a cluster's nodes, ``[(host, port), ...]``): after a lost
  connection or a failed connect paho's reconnect goes to the next node; the
  client id and session are the same on every node, so a broker cluster that
  shares sessions (docs/scaling.md) keeps the subscription and queue.
- ``protocol=4`` speaks MQTT 3.1.1 (NATS's MQTT listener): no properties,
  so Receive Maximum and Maximum Packet Size are not announced and the
  session lasts as long as the broker keeps 3.1.1 sessions; the inbox bound
  and TCP backpressure above still hold.
- ``start`` with a timeout names a failure as soon as it is known, not when
  the timeout ends: the first connection attempt runs in the caller's
  thread, so a refused port, an unresolvable host and a TLS failure raise
  ``LinkError`` at once with that reason; a CONNACK or SUBACK refusal ends
  the wait as soon as it arrives. ``timed out`` means no answer at all.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["UP_PREFIX", "DOWN_PREFIX", "MAX_PACKET_BYTES", "MqttLink", "LinkError"]

UP_PREFIX = "moteseal/v1/up/"
DOWN_PREFIX = "moteseal/v1/down/"
DEFAULT_SESSION_EXPIRY = 86400  # s the broker keeps a device's queue while it sleeps
# The largest packet we accept: a 1200-byte envelope (the gateway's
# max_envelope_bytes) plus fixed header (5), topic (2 + 17 + 16), packet id (2)
# and properties, with room to spare; the same value as the shipped broker's
# max_packet_size (broker_config/).
MAX_PACKET_BYTES = 2048
INBOX_MAX = 1024  # bound on envelopes held for ``recv``; a full inbox stalls the reader thread


class LinkError(OSError):
    """The broker refused or could not be reached in time."""


class MqttLink:
    """One id's MQTT connection: ``send(envelope)``, ``recv(timeout)``.

    Pass ``on_envelope`` to get each envelope in paho's network thread
    instead of through ``recv``. May be shared between threads: ``send``
    and ``recv`` may be called from any thread.
    """

    def __init__(self, device_id: str, host: str = "127.0.0.1", port: int = 1883, *,
                 username: str | None = None, password: str | None = None,
                 tls: bool = False, ca_file: str | None = None,
                 client_id: str | None = None, clean_start: bool = False,
                 session_expiry: int = DEFAULT_SESSION_EXPIRY, keepalive: int = 30,
                 max_inflight: int = 100, inbox_size: int = INBOX_MAX,
                 on_envelope: Callable[[bytes], None] | None = None,
                 hosts: list[tuple[str, int]] | None = None, protocol: int = 5) -> None:
        if not 0 < max_inflight <= 65535:
            raise ValueError("max_inflight must be 1..65535 (MQTT 5 Receive Maximum)")
        if inbox_size < 1:
            raise ValueError("inbox_size must be at least 1")
        if protocol not in (4, 5):
            raise ValueError("protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1)")
        self.hosts = list(hosts) if hosts else [(host, port)]
        host, port = self.hosts[0]
        self._host_index = 0
        self.protocol = protocol
        self.device_id = device_id
        self.host, self.port = host, port
        self.up_topic = UP_PREFIX + device_id
        self.down_topic = DOWN_PREFIX + device_id
        self.connected = threading.Event()  # set once the down subscription is held
        self.refused: str | None = None
        self._refusal = threading.Event()  # set with ``refused``: start() stops waiting
        self.received = 0  # envelopes taken into the inbox or handed to on_envelope
        self.redelivered = 0  # broker redeliveries of an envelope already waiting here
        self.stalls = 0  # times the inbox was full and the network thread waited
        self._pending: set[int] = set()  # packet ids in the inbox, not yet acknowledged
        self._pending_lock = threading.Lock()
        self._closing = threading.Event()
        self._inbox: "queue.Queue[tuple[bytes, int, int]]" = queue.Queue(inbox_size)
        self._on_envelope = on_envelope
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._max_inflight = max_inflight
        v5 = protocol == 5
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"moteseal-{device_id}",
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=True,
                        clean_session=None if v5 else clean_start)
        if username:
            c.username_pw_set(username, password)
        if tls:
            c.tls_set(ca_certs=ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(max_inflight)
        c.reconnect_delay_set(1, 10)
        c.on_socket_open = lambda client, userdata, sock: _nodelay(sock)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = lambda client, userdata: self._next_host()
        c.on_message = self._on_message
        self.client = c

    def start(self, timeout: float | None = 10.0) -> "MqttLink":
        """Connect in the background; with ``timeout``, wait until the down
        subscription is held. Raises ``LinkError`` on refusal or timeout."""
        props: Properties | None = None
        kw: dict[str, Any] = {}
        if self.protocol == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry
            props.ReceiveMaximum = self._max_inflight
            props.MaximumPacketSize = MAX_PACKET_BYTES
            kw = {"clean_start": self._clean_start, "properties": props}
        if timeout is None:
            self.client.connect_async(self.host, self.port, keepalive=self._keepalive, **kw)
            self.client.loop_start()
            return self
        deadline = time.monotonic() + timeout
        self.client.connect_timeout = max(0.1, timeout)
        while True:
            try:
                self.client.connect(self.host, self.port, keepalive=self._keepalive, **kw)
                break
            except (OSError, ValueError) as e:  # ValueError: paho's for a bad host or port
                # Another node may answer: each is tried once before failing.
                if self._host_index + 1 >= len(self.hosts) or time.monotonic() >= deadline:
                    self._fail(_why(e))
                self._next_host()
        self.client.loop_start()
        while not self.connected.is_set() and not self._refusal.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.connected.wait(min(left, 0.05))
        if not self.connected.is_set():
            self._fail(self.refused or "timed out")
        return self

    def _fail(self, reason: str) -> None:
        self.close()
        raise LinkError(f"MQTT {self.host}:{self.port} as {self.device_id}: {reason}")

    def send(self, envelope: bytes) -> mqtt.MQTTMessageInfo:
        """Publish one envelope on the up topic (QoS 1). While disconnected,
        paho keeps it and sends it after reconnecting."""
        return self.client.publish(self.up_topic, envelope, qos=1)

    def recv(self, timeout: float | None = 0.0) -> bytes | None:
        """The next envelope from the down topic, or None after ``timeout``
        seconds (0: do not wait; None: wait forever)."""
        try:
            if timeout == 0.0:
                payload, mid, qos = self._inbox.get_nowait()
            else:
                payload, mid, qos = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if qos:
            with self._pending_lock:
                self._pending.discard(mid)
        self._ack(mid, qos)
        return payload

    def close(self) -> None:
        """Disconnect. The broker keeps the session (and queues for it) for
        the session expiry interval. Envelopes still in the inbox were never
        acknowledged, so the broker delivers them again next time."""
        self._closing.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self.refused = f"refused by the broker: {rc}"
            self._refusal.set()
            if rc.value in (134, 135):  # bad credentials, not authorised: retrying is futile
                client.disconnect()
            return
        if self.protocol == 5:
            client.subscribe(self.down_topic, options=SubscribeOptions(qos=1))
        elif not flags.session_present:
            # 3.1.1: a resumed session holds the subscription already, and on
            # NATS 2.9 a second SUBSCRIBE replaces the JetStream consumer
            # behind it, losing what it had queued (docs/scaling.md).
            client.subscribe(self.down_topic, qos=1)
        if flags.session_present:
            # The broker kept our session (client id ``moteseal-<id>``, which
            # only this link uses, and it always subscribes), so it holds the
            # subscription and may send its backlog before the SUBACK; a full
            # inbox would hold that SUBACK back behind the reader, so the link
            # counts as up already. A refused SUBACK still clears it.
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()
        if not self._closing.is_set():
            self._next_host()

    def _next_host(self) -> None:
        """Point paho's next (re)connect at the next node (a no-op with one)."""
        if len(self.hosts) < 2:
            return
        self._host_index = (self._host_index + 1) % len(self.hosts)
        self.host, self.port = self.hosts[self._host_index]
        try:
            self.client.host, self.client.port = self.host, self.port
        except RuntimeError:
            # paho 2.x refuses the setters until its state says closed, which
            # its on_disconnect comes before; its reconnect reads these two.
            self.client._host, self.client._port = self.host, self.port

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            self.refused = f"subscription to {self.down_topic} refused"
            self._refusal.set()
            self.connected.clear()
            return
        self.connected.set()

    def _ack(self, mid: int, qos: int) -> None:
        if qos:
            # After a reconnect the broker redelivers what was not acknowledged,
            # under the same packet id; a duplicate is the replay window's job.
            self.client.ack(mid, qos)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.down_topic:
            self._ack(msg.mid, msg.qos)
            return
        payload = bytes(msg.payload)
        if self._on_envelope is not None:
            self.received += 1
            self._on_envelope(payload)
            self._ack(msg.mid, msg.qos)
            return
        if msg.qos:
            with self._pending_lock:
                if msg.mid in self._pending:
                    # A packet id stays ours until we acknowledge it, so this
                    # is the same envelope again (MQTT 5 section 4.3.2): the
                    # copy in the inbox will be acknowledged when it is read.
                    self.redelivered += 1
                    return
                self._pending.add(msg.mid)
        self.received += 1
        item = (payload, msg.mid, msg.qos)
        try:
            self._inbox.put_nowait(item)
            return
        except queue.Full:
            self.stalls += 1
        # Backpressure: wait for the reader rather than drop. Reading from the
        # socket stops meanwhile, so the broker holds the rest. On close the
        # envelope stays unacknowledged and the broker delivers it next session.
        while not self._closing.is_set():
            try:
                self._inbox.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


def _why(e: BaseException) -> str:
    """A failed first connection attempt, named for a person."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host ({e.strerror})"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: {e.verify_message or 'certificate not trusted'}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out connecting"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def _nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass

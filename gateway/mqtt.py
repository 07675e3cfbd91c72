"""The gateway's MQTT link: a paho adapter around the relay core.

Subscribes to ``$share/<group>/moteseal/v1/up/+`` (MQTT v5 shared
subscription, so several gateways split the load) and publishes to
``moteseal/v1/down/<id>``. Topics are in docs/protocol.md, "MQTT topics".

Invariants:
- QoS 1 both ways, and an inbound message is acknowledged (manual PUBACK)
  only when the relay is done with it: dropped, or forwarded and the
  broker's PUBACK for the forwarded copy has arrived. A gateway killed at any
  point therefore loses nothing; the broker re-delivers what was not
  acknowledged (a duplicate is possible and the receiver's replay window
  discards it).
- The gateway's session is persistent (clean_start False, a session expiry
  interval) under a fixed client id, so the broker queues for it while it
  restarts. No device state is kept here.
- Client sockets run with TCP_NODELAY: small envelopes must not wait for
  Nagle's algorithm.
- At most ``window`` forwarded publishes await a PUBACK (the smaller of our
  ``max_inflight`` and the broker's Receive Maximum); more wait in our own
  FIFO. paho's own in-flight limit is off because it rescans every
  outstanding message on each PUBACK (O(window) per message).
- A forward is written to the socket inside the receive callback, not on the
  loop's next turn: one select round less on the hot path.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttConfig
from gateway.logs import JsonLog
from gateway.relay import Done, Relay

__all__ = ["UP_PREFIX", "DOWN_PREFIX", "MqttLink", "set_nodelay", "up_subscription"]

UP_PREFIX = "moteseal/v1/up/"
DOWN_PREFIX = "moteseal/v1/down/"
LINK_NAME = "mqtt"


def set_nodelay(sock: Any) -> None:
    """Disable Nagle's algorithm on a paho socket (plain or TLS)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a unix socket in a test); nothing to do


def up_subscription(share_group: str) -> str:
    """The up-topic filter, shared among gateways when ``share_group`` is set."""
    topic = UP_PREFIX + "+"
    return f"$share/{share_group}/{topic}" if share_group else topic


class _Client(mqtt.Client):
    """paho's client with one change on the hot path: a packet queued from
    paho's own network thread (a forward or an ack from inside a callback) is
    not announced through paho's wake-up socket pair, because the loop selects
    for writing whenever packets are queued anyway. That saves a send and a
    recv system call per packet. Packets from other threads (a serial link)
    still wake the loop. Used only if paho's internals match
    (``_FAST_QUEUE``); otherwise the stock client is used."""

    def _packet_queue(self, command, packet, mid, qos, info=None):  # type: ignore[no-untyped-def]
        if threading.current_thread() is self._thread:
            self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                     "to_process": len(packet), "packet": packet, "info": info})
            return mqtt.MQTT_ERR_SUCCESS
        return super()._packet_queue(command, packet, mid, qos, info)


def _fast_queue_fits() -> bool:
    import inspect

    try:
        params = list(inspect.signature(mqtt.Client._packet_queue).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    probe = mqtt.Client(CallbackAPIVersion.VERSION2)
    return (params[:6] == ["self", "command", "packet", "mid", "qos", "info"]
            and hasattr(probe, "_out_packet") and hasattr(probe, "_thread"))


_FAST_QUEUE = _fast_queue_fits()


class MqttLink:
    """The ``mqtt`` link of a relay: feeds up-topic messages to
    ``relay.handle`` and implements ``send`` by publishing to down topics."""

    name = LINK_NAME

    def __init__(self, cfg: MqttConfig, relay: Relay, log: JsonLog) -> None:
        self.cfg = cfg
        self.relay = relay
        self.log = log
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[int, Done | None] = {}  # mid -> done, awaiting PUBACK
        self._early: set[int] = set()  # PUBACKs that beat the bookkeeping in send()
        self._backlog: deque[tuple[str, bytes, Done | None]] = deque()  # beyond the window
        self.window = cfg.max_inflight
        self._debug = log.enabled("debug")
        client_class = _Client if _FAST_QUEUE else mqtt.Client
        c = client_class(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                         protocol=mqtt.MQTTv5, manual_ack=True)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            c.tls_set(ca_certs=cfg.ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(0)  # our own window instead (see Invariants)
        c.reconnect_delay_set(1, 5)
        c.on_socket_open = lambda client, userdata, sock: set_nodelay(sock)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.client = c

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho retries until the broker is up)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry
        props.ReceiveMaximum = self.cfg.max_inflight
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def queue_depth(self) -> int:
        """Forwarded envelopes awaiting the broker's PUBACK or a window slot."""
        return len(self._pending) + len(self._backlog)

    # -- paho callbacks (network thread) ---------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self.log.event("mqtt_connect_failed", level="error", reason=str(rc),
                           host=self.cfg.host, port=self.cfg.port)
            return
        server_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self.window = min(self.cfg.max_inflight, server_max or 65535)
        topic = up_subscription(self.cfg.share_group)
        client.subscribe(topic, options=SubscribeOptions(qos=1))
        self.log.event("mqtt_connected", host=self.cfg.host, port=self.cfg.port,
                       client_id=self.cfg.client_id, subscription=topic,
                       session_present=bool(flags.session_present))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            self.log.event("mqtt_subscribe_refused", level="error", reason=str(rcs[0]))
            return
        # Ready only once the broker holds our subscription.
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()
        self.log.event("mqtt_disconnected", level="warning", reason=str(rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        mid, qos = msg.mid, msg.qos
        if not topic.startswith(UP_PREFIX):
            client.ack(mid, qos)
            return
        arrived_from = topic[len(UP_PREFIX):]
        if self._debug:
            self.log.event("envelope", level="debug", arrived_from=arrived_from[:64],
                           size=len(msg.payload))
        # Ack only once the relay is done: dropped, or forwarded and PUBACKed.
        self.relay.handle(msg.payload, arrived_from, LINK_NAME,
                          (lambda: client.ack(mid, qos)) if qos else None)
        # We are on paho's network thread, the socket's only writer: send the
        # forward now rather than after another select().
        client.loop_write()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    props: Any) -> None:
        with self._lock:
            done = self._pending.pop(mid, _MISSING)
            if done is _MISSING:
                self._early.add(mid)
                return
            nxt = self._backlog.popleft() if self._backlog else None
        if done is not None:
            done()  # type: ignore[operator]
        if nxt is not None:
            try:
                self._publish(*nxt)
            except OSError as exc:
                self.log.event("forward_failed", level="error", dst=nxt[0], error=str(exc))
                if nxt[2] is not None:
                    nxt[2]()

    # -- Link ------------------------------------------------------------

    def send(self, dst: str, envelope: bytes, done: Done | None) -> None:
        """Publish ``envelope`` to ``dst``'s down topic (QoS 1); ``done`` runs
        on the broker's PUBACK. Raises ``OSError`` if paho refuses it."""
        with self._lock:
            if len(self._pending) >= self.window or self._backlog:
                self._backlog.append((dst, envelope, done))
                return
        self._publish(dst, envelope, done)

    def _publish(self, dst: str, envelope: bytes, done: Done | None) -> None:
        info = self.client.publish(DOWN_PREFIX + dst, envelope, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps the message and sends it after reconnecting.
            raise OSError(f"paho publish failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._pending[info.mid] = done
                return
        if done is not None:
            done()


_MISSING = object()

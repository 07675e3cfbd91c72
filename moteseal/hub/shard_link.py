"""The MQTT link of one sharded hub worker (docs/scaling.md, "Sharded
hubs"): it subscribes to the up topics of exactly the devices whose shards
the worker holds, and publishes its replies to each device's down topic.
No gateway sits between a sharded worker and its MQTT devices, so the
worker's broker account needs the gateway's rights (``moteseal broker
add-account NAME --role gateway``: read every up topic, write every down
topic).

Invariants:
- Everything ``MqttLink`` keeps (QoS 1 both ways, PUBACK only once the
  application has the envelope, backpressure, no keys, no logging) holds;
  this class changes which topics it reads and where it writes.
- An envelope that arrives on the up topic of a device the worker no longer
  holds (in flight while it unsubscribed) is acknowledged to the broker and
  dropped (counted in ``dropped``): the device's new worker never saw it, it
  is not acknowledged end to end, and the device sends it again.
- ``brokers`` is a list of ``(host, port)``: ``start`` connects to the first
  that answers, and after a lost connection the next reconnect goes to the
  next address in the list (round robin), so a dead broker node costs one
  reconnect interval.
- The client id is ``moteseal-<peer>-<worker>`` with a clean session: a
  restarted worker holds no stale subscriptions for shards another worker
  has taken.
- ``via_gateway=True`` (``[shards] via = "gateway"``): the devices reach the
  workers through gateways (serial devices, or a deployment whose device
  traffic the gateways police). Every worker then reads the peer's down
  topic ``moteseal/v1/down/<peer>`` (where a gateway forwards what devices
  send to the peer) and keeps only envelopes whose ``src`` it holds; the
  rest are acknowledged to the broker and counted in ``dropped``, as above.
  Replies go to ``moteseal/v1/up/<peer>``, which the gateways read and route
  by ``dst``. The worker's broker account is then the peer's own (device
  role), not the gateway role.
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from device import envelope as E
from device.errors import LocalError, RemoteError
from moteseal.links.mqtt_link import DOWN_PREFIX, UP_PREFIX, LinkError, MqttLink

__all__ = ["ShardLink"]

SUBSCRIBE_CHUNK = 100  # topics per SUBSCRIBE/UNSUBSCRIBE packet


class ShardLink(MqttLink):
    """``send``/``recv`` for the devices ``set_devices`` names. Thread-safe:
    ``set_devices`` may run on the lease thread while ``recv``/``send`` run
    on the listener's."""

    def __init__(self, peer_id: str, worker: str, brokers: list[tuple[str, int]], *,
                 via_gateway: bool = False, **kw: Any) -> None:
        if not brokers:
            raise ValueError("at least one broker address")
        self.via_gateway = via_gateway
        self._brokers = list(brokers)
        self._next = 0
        super().__init__(peer_id, brokers[0][0], brokers[0][1], client_id=f"moteseal-{peer_id}-{worker}",
                         clean_start=True, session_expiry=0, **kw)
        self._topics: set[str] = set()
        self._topic_lock = threading.Lock()
        self.dropped = 0  # envelopes for devices no longer held (re-sent by the devices)
        self.client.on_disconnect = self._on_lost

    def start(self, timeout: float | None = 10.0) -> "ShardLink":
        """Connect to the first broker address that answers. Raises
        ``LinkError`` (naming the last failure) if none does."""
        err: LinkError | None = None
        for i, (host, port) in enumerate(self._brokers):
            self.host, self.port = host, port
            self._closing.clear()
            self._refusal.clear()
            self.refused = None
            try:
                super().start(timeout)
            except LinkError as e:
                err = e
                continue
            self._next = (i + 1) % len(self._brokers)
            return self
        assert err is not None
        raise err

    def set_devices(self, devices: list[str]) -> None:
        """Hold exactly these devices' up topics (subscribing to the new
        ones, unsubscribing from the rest)."""
        want = {UP_PREFIX + d for d in devices}
        with self._topic_lock:
            gone = sorted(self._topics - want)
            new = sorted(want - self._topics)
            self._topics = want
        if self.via_gateway:
            return  # one subscription (the peer's down topic) serves every device
        for i in range(0, len(gone), SUBSCRIBE_CHUNK):
            self.client.unsubscribe(gone[i:i + SUBSCRIBE_CHUNK])
        for i in range(0, len(new), SUBSCRIBE_CHUNK):
            self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in new[i:i + SUBSCRIBE_CHUNK]])

    def holds(self, device: str) -> bool:
        with self._topic_lock:
            return UP_PREFIX + device in self._topics

    def send(self, envelope: bytes) -> mqtt.MQTTMessageInfo:
        """Publish a reply to its destination device's down topic (QoS 1).
        Raises ``LocalError`` for bytes that are not an envelope (never
        happens for what ``PeerSessions`` writes)."""
        try:
            env = E.Envelope().decode_into(envelope, len(envelope), len(envelope))
        except (RemoteError, ValueError, IndexError):
            raise LocalError("not an envelope") from None
        if self.via_gateway:
            return self.client.publish(self.up_topic, envelope, qos=1)  # the gateways route by dst
        return self.client.publish(DOWN_PREFIX + bytes(env.dst).decode("ascii"), envelope, qos=1)

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            super()._on_connect(client, userdata, flags, rc, props)
            return
        if self.via_gateway:
            if self.protocol == 5:
                client.subscribe(self.down_topic, options=SubscribeOptions(qos=1))
            else:
                client.subscribe(self.down_topic, qos=1)
            return
        with self._topic_lock:
            topics = sorted(self._topics)
        if not topics:
            self.connected.set()
        for i in range(0, len(topics), SUBSCRIBE_CHUNK):
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics[i:i + SUBSCRIBE_CHUNK]])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            self.refused = (f"subscription to {self.down_topic} refused (via gateway: the worker needs "
                            "the peer's own account)" if self.via_gateway else
                            "subscription to device up topics refused (the worker needs the gateway role)")
            self._refusal.set()
            self.connected.clear()
            return
        self.connected.set()

    def _on_lost(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        if self._closing.is_set() or len(self._brokers) < 2:
            return
        host, port = self._brokers[self._next]
        self._next = (self._next + 1) % len(self._brokers)
        try:
            client.host, client.port = host, port  # paho reconnects to these
            self.host, self.port = host, port
        except (RuntimeError, ValueError):
            pass  # still open: paho retries the same address once more

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.via_gateway:
            self._on_forwarded(msg)
            return
        with self._topic_lock:
            held = msg.topic in self._topics
        if not held:
            self.dropped += 1
            self._ack(msg.mid, msg.qos)
            return
        # MqttLink's handling (inbox, backpressure, PUBACK when read), which
        # accepts only its own down topic; paho keeps the topic as bytes.
        msg.topic = self.down_topic.encode()  # type: ignore[assignment]
        super()._on_message(client, userdata, msg)

    def _on_forwarded(self, msg: mqtt.MQTTMessage) -> None:
        """via_gateway: keep an envelope on the peer's down topic only if its
        sender's shard is held here."""
        src = None
        if msg.topic == self.down_topic:
            payload = bytes(msg.payload)
            try:
                src = bytes(E.Envelope().decode_into(payload, len(payload), len(payload)).src)
            except (RemoteError, ValueError, IndexError):
                src = None
        held = False
        if src is not None:
            try:
                topic = UP_PREFIX + src.decode("ascii")
            except UnicodeDecodeError:
                topic = ""
            with self._topic_lock:
                held = topic in self._topics
        if not held:
            self.dropped += 1
            self._ack(msg.mid, msg.qos)
            return
        super()._on_message(self.client, None, msg)

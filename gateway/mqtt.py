"""The gateway's MQTT link: the relay core's ``mqtt`` link over a small
MQTT 5 client of our own (``gateway.mqtt_wire``).

Subscribes to ``moteseal/v1/up/+`` (or ``$share/<group>/moteseal/v1/up/+``,
an MQTT v5 shared subscription, so that several gateways split the load) and
publishes to ``moteseal/v1/down/<id>``. Topics are in docs/protocol.md, "MQTT
topics".

It is the gateway's only MQTT client. A paho-based link with the same
contract was measured against it with ``bench/bench_relay.py`` and removed:
paho's own machinery costs more per hop than the relay's throughput goal
allows (docs/gateway.md, "Why not paho"). This one does only what the relay
needs, and keeps these guarantees:

- QoS 1 both ways; an inbound message is acknowledged only when the relay is
  done with it (dropped, or forwarded and PUBACKed), so a killed gateway
  loses nothing: the broker re-delivers what was not acknowledged (a
  duplicate is possible and the receiver's replay window discards it).
- A persistent session (clean start off, a session expiry interval, a fixed
  client id), so the broker queues for the gateway while it restarts; after
  a reconnect, forwards not yet acknowledged are sent again with DUP set
  (section 4.4). No device state is kept here.
- At most ``window`` forwards await a PUBACK (our ``max_inflight`` and the
  broker's Receive Maximum, whichever is smaller); the rest wait in order.
- TCP_NODELAY (small envelopes must not wait for Nagle's algorithm); TLS with
  ``tls``/``ca_file``; keepalive pings; reconnects with backoff (1 s
  doubling to 5 s).
- Several brokers (``hosts``, a cluster's nodes): they are tried in order
  from the one last used; a failed connect or a lost connection moves to the
  next at once, and only after every node failed in a row does the backoff
  apply. The client id and session are the same on every node, so a
  cluster that shares sessions (NATS JetStream, docs/scaling.md) resumes the
  subscription and re-delivers what was not acknowledged; forwards not yet
  acknowledged are sent again (DUP) to the new node.
- ``protocol = 4`` speaks MQTT 3.1.1 (no properties): Receive Maximum and
  Maximum Packet Size are not announced (the broker's own limits apply, and
  our ``PacketReader`` still refuses oversize packets), the session lasts as
  the broker keeps 3.1.1 sessions, and there are no shared subscriptions
  (config refuses ``share_group``; ``shards`` replaces it).
- ``shards > 1``: an envelope is forwarded only if its device (the sender,
  or the destination when the sender is a peer) is in shard ``shard``
  (``gateway.shard.shard_of``); others are acknowledged at once and
  counted in ``other_shard``: another gateway's session forwards them.
- ``shard = "auto"``: the shards (``shards`` of them, 64 by default) are
  owned as ``gateway.membership.Membership`` says. The link publishes its
  heartbeat (QoS 0) on ``moteseal/v1/gw/<client id>`` every
  ``heartbeat_s``, the first right after its up subscription holds, sets
  ``down`` there as its will and says ``down`` before a clean DISCONNECT,
  and subscribes to ``moteseal/v1/gw/+``. Other shards' envelopes go to a
  ``TakeoverBuffer``; when shards are taken over, the buffered ones of those
  shards are handed to the relay again (``replayed``). After each connect
  the link first settles: for ``1.5 * heartbeat_s`` after its heartbeat
  subscription holds (long enough to hear every live gateway) it holds up
  envelopes unacknowledged (``held``; at most the broker's in-flight
  window, so bounded by the broker) and then decides each by the settled
  live set. So a restarted gateway forwards its own shards' backlog, not
  every shard's.
- One network thread owns the socket: a forward or an ack made on it (the
  MQTT-to-MQTT hot path) is written at once; writes from other threads (a
  serial link's ``send``, an ``ack`` from a serial ``done``) are queued and
  the thread is woken through a socket pair.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any

from gateway import mqtt_wire as W
from gateway.config import MqttConfig
from gateway.envelope import Rejected, read_header
from gateway.logs import JsonLog
from gateway.membership import (DOWN, HEARTBEAT_FILTER, HEARTBEAT_PREFIX, Membership,
                                TakeoverBuffer, heartbeat_payload)
from gateway.relay import Done, Relay
from gateway.shard import shard_of

__all__ = ["UP_PREFIX", "DOWN_PREFIX", "LINK_NAME", "MqttLink", "up_subscription"]

UP_PREFIX = "moteseal/v1/up/"
DOWN_PREFIX = "moteseal/v1/down/"
LINK_NAME = "mqtt"

# Largest packet we accept (announced as Maximum Packet Size): an envelope of
# the largest configurable size plus topic and headers, with room to spare.
MAX_PACKET_BYTES = 65536 + 1024
_SUB_PID = 1  # packet id of our up SUBSCRIBE; PUBLISH ids start above _HB_SUB_PID
_HB_SUB_PID = 2  # packet id of the heartbeat SUBSCRIBE (shard = "auto")


def up_subscription(share_group: str) -> str:
    """The up-topic filter, shared among gateways when ``share_group`` is set."""
    topic = UP_PREFIX + "+"
    return f"$share/{share_group}/{topic}" if share_group else topic


class _Lost(Exception):
    """The connection is gone; reconnect."""


class MqttLink:
    """The ``mqtt`` link of a relay (see module docstring). ``send`` may be
    called from any thread; the rest belongs to the owner and the network
    thread."""

    name = LINK_NAME

    def __init__(self, cfg: MqttConfig, relay: Relay, log: JsonLog) -> None:
        self.cfg = cfg
        self.relay = relay
        self.log = log
        self.connected = threading.Event()
        self.window = cfg.max_inflight
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[bytes, bytes, Done | None]] = {}  # pid -> topic, payload, done
        self._backlog: deque[tuple[bytes, bytes, Done | None]] = deque()
        self._next_pid = _SUB_PID
        self._outq: deque[bytes] = deque()  # packets from other threads
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reader = W.PacketReader(MAX_PACKET_BYTES)
        self._last_out = 0.0
        self._last_in = 0.0
        self._broken = ""  # set by a failed write; the loop then reconnects
        self._early_packets: list[tuple[int, int, bytes]] = []
        self._up_len = len(UP_PREFIX)
        self.version = cfg.protocol
        self._hosts = list(cfg.hosts) or [(cfg.host, cfg.port)]
        self._host_index = 0
        self.host, self.port = self._hosts[0]  # the node in use (or last tried)
        self.failovers = 0  # times the link moved to another node
        self.other_shard = 0  # envelopes left to another gateway's shard
        self.received = 0  # PUBLISH packets from the broker (redeliveries included)
        self.membership: Membership | None = None
        self.buffer: TakeoverBuffer | None = None
        self.replayed = 0  # buffered envelopes handed to the relay at a takeover
        self._last_hb = 0.0
        self._peers_logged: list[str] = []
        self._settle_at: float | None = None  # set at the heartbeat SUBACK; None once settled
        self._held: list[tuple[int, bytes]] = []  # (flags, body) of PUBLISHes while settling
        self._settled = not cfg.auto
        if cfg.auto:
            self.membership = Membership(cfg.client_id, cfg.shards, cfg.peer_timeout_s,
                                         cfg.takeover_replay_s)
            # The longest look-back a takeover makes, plus a heartbeat.
            age = cfg.peer_timeout_s + cfg.takeover_replay_s + cfg.heartbeat_s
            self.buffer = TakeoverBuffer(cfg.takeover_buffer, age)
            self._hb_topic = (HEARTBEAT_PREFIX + cfg.client_id).encode()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
        self.connected.clear()
        self._wake_r.close()
        self._wake_w.close()

    def shard_status(self) -> dict[str, Any]:
        """Auto mode's part of the status (empty otherwise). Any thread: it
        reads attributes the network thread replaces whole."""
        m, b = self.membership, self.buffer
        if m is None or b is None:
            return {}
        return {"peers": list(self._peers_logged), "owned_shards": sorted(m.owned),
                "shards": self.cfg.shards, "takeovers": m.takeovers, "replayed": self.replayed,
                "takeover_buffer": len(b), "takeover_buffer_evicted": b.evicted,
                "bad_heartbeats": m.bad_heartbeats, "shard_mismatch": m.shard_mismatch}

    def queue_depth(self) -> int:
        return len(self._inflight) + len(self._backlog)

    # -- Link ------------------------------------------------------------

    def send(self, dst: str, envelope: bytes, done: Done | None) -> None:
        """Publish ``envelope`` to ``dst``'s down topic (QoS 1); ``done``
        runs on the broker's PUBACK. Held in order while the window is full
        or the broker is unreachable."""
        topic = (DOWN_PREFIX + dst).encode()
        with self._lock:
            if len(self._inflight) >= self.window or self._backlog or not self.connected.is_set():
                self._backlog.append((topic, envelope, done))
                return
            pid = self._take_pid()
            self._inflight[pid] = (topic, envelope, done)
        self._write(W.encode_publish(topic, pid, envelope, version=self.version))

    def _take_pid(self) -> int:
        # Caller holds the lock. Ids in flight are never reused.
        pid = self._next_pid
        while True:
            pid = pid + 1 if pid < 0xFFFF else _HB_SUB_PID + 1
            if pid not in self._inflight and pid != _HB_SUB_PID:
                self._next_pid = pid
                return pid

    def _ack(self, pid: int) -> None:
        self._write(W.encode_puback(pid))

    def _write(self, packet: bytes) -> None:
        if threading.current_thread() is self._thread:
            self._send_now(packet)
        else:
            self._outq.append(packet)
            self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # already awake, or stopping

    def _send_now(self, packet: bytes) -> None:
        """Write on the network thread. Never raises: a failed write marks the
        connection broken and the loop reconnects; unacknowledged forwards are
        resent then, and unacknowledged inbound messages come again."""
        sock = self._sock
        if sock is None or self._broken:
            return
        try:
            sock.sendall(packet)
        except OSError as exc:
            self._broken = f"send: {exc}"
            return
        self._last_out = time.monotonic()

    # -- network thread --------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        failed_in_row = 0  # connect failures since the last good connection
        while not self._stop.is_set():
            up = False
            try:
                self._connect()
                up = True
                delay, failed_in_row = 1.0, 0
                self._serve()
            except (_Lost, OSError, W.ProtocolError, ssl.SSLError) as exc:
                failed_in_row += 0 if up else 1
                several = len(self._hosts) > 1
                # Another node is tried at once (a short pause, so a node that
                # refuses at once cannot make a busy loop); once every node
                # failed in a row, back off.
                if several and failed_in_row < len(self._hosts):
                    wait = 0.1
                else:
                    wait, failed_in_row = delay, 0
                    delay = min(delay * 2, 5.0)
                # Said at once, naming the broker: a gateway that cannot reach
                # it (refused, DNS, TLS, CONNACK) must not look merely idle.
                self.log.event("mqtt_disconnected" if up else "mqtt_connect_failed",
                               level="warning" if up else "error", host=self.host,
                               port=self.port, reason=str(exc)[:200], retry_in=wait)
                if several:
                    self._host_index = (self._host_index + 1) % len(self._hosts)
                    self.failovers += 1
            else:
                wait = delay  # a clean stop: the loop ends below
            finally:
                self.connected.clear()
                self._close()
            if self._stop.wait(wait):
                break

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connect(self) -> None:
        cfg = self.cfg
        self.host, self.port = host, port = self._hosts[self._host_index]
        raw = socket.create_connection((host, port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cfg.tls:
            ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            raw = ctx.wrap_socket(raw, server_hostname=host)
        raw.settimeout(30)  # a broker that stops reading us for 30 s is lost
        self._sock = raw
        self._broken = ""
        self._reader.reset()
        self._outq.clear()  # acks and packets meant for the old connection
        self._held.clear()  # never acknowledged: the broker sends them again
        self._settled, self._settle_at = not cfg.auto, None
        self._send_now(W.encode_connect(
            cfg.client_id, cfg.keepalive, clean_start=False, session_expiry=cfg.session_expiry,
            receive_maximum=cfg.max_inflight, max_packet=MAX_PACKET_BYTES,
            username=cfg.username, password=cfg.password, version=self.version,
            will=(HEARTBEAT_PREFIX + cfg.client_id, DOWN) if cfg.auto else None))
        packets = self._read_first(10.0)
        ptype, _flags, body = packets[0]
        self._early_packets = packets[1:]  # e.g. queued PUBLISHes right behind CONNACK
        if ptype != W.CONNACK:
            raise W.ProtocolError(f"expected CONNACK, got packet type {ptype}")
        session_present, reason, props = W.parse_connack(body, self.version)
        if reason >= 0x80:
            raise _Lost(f"connection refused, reason 0x{reason:02x}")
        server_max = props.get(W.RECEIVE_MAXIMUM)
        with self._lock:
            self.window = min(cfg.max_inflight, int(server_max) if server_max else 65535)
            resend = list(self._inflight.items())
        # Forwards the broker has not acknowledged go again (same ids, DUP).
        for pid, (topic, payload, _done) in resend:
            self._send_now(W.encode_publish(topic, pid, payload, dup=True, version=self.version))
        topic_filter = up_subscription(cfg.share_group)
        if session_present and self.version == 4:
            # The session holds our one subscription (a fixed filter). On NATS
            # 2.9 a SUBSCRIBE again replaces its JetStream consumer, and what
            # was queued for the old one can be lost (docs/scaling.md).
            self.connected.set()
            self._drain_backlog()
        else:
            self._send_now(W.encode_subscribe(_SUB_PID, topic_filter, 1, version=self.version))
        if cfg.auto:  # QoS 0: no JetStream consumer on NATS, so subscribing again is harmless
            self._send_now(W.encode_subscribe(_HB_SUB_PID, HEARTBEAT_FILTER, 0,
                                              version=self.version))
        self.log.event("mqtt_connected", host=host, port=port, client_id=cfg.client_id,
                       subscription=topic_filter, session_present=session_present)

    def _read_first(self, timeout: float) -> list[tuple[int, int, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Lost("no answer from the broker")
            self._sock.settimeout(left)
            data = self._sock.recv(65536)
            if not data:
                raise _Lost("broker closed the connection")
            packets = self._reader.feed(data)
            if packets:
                self._sock.settimeout(30)
                return packets

    def _serve(self) -> None:
        keepalive = float(self.cfg.keepalive)
        self._last_in = self._last_out = time.monotonic()
        sock = self._sock
        early, self._early_packets = self._early_packets, []
        for ptype, flags, body in early:
            self._handle(ptype, flags, body)
        while not self._stop.is_set():
            if self._broken:
                raise _Lost(self._broken)
            tick = keepalive / 2 if self.membership is None else min(keepalive / 2,
                                                                      self.cfg.heartbeat_s / 4)
            r, _w, _x = select.select([sock, self._wake_r], [], [], tick)
            if self._wake_r in r:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
            while self._outq:
                self._send_now(self._outq.popleft())
            if sock in r:
                self._read_available(sock)
            now = time.monotonic()
            if self.membership is not None:
                self._membership_tick(now)
            if now - self._last_in > keepalive * 1.5:
                raise _Lost("keepalive: nothing from the broker")
            if now - self._last_out >= keepalive / 2:
                self._send_now(W.PINGREQ_PACKET)
        if self.membership is not None:  # a clean DISCONNECT sends no will
            self._send_now(W.encode_publish_qos0(self._hb_topic, DOWN, version=self.version))
        self._send_now(W.DISCONNECT_PACKET)  # clean stop; the session stays

    def _read_available(self, sock: Any) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        if not data:
            raise _Lost("broker closed the connection")
        while True:
            self._last_in = time.monotonic()
            for ptype, flags, body in self._reader.feed(data):
                self._handle(ptype, flags, body)
            pending = getattr(sock, "pending", None)  # TLS: decrypted bytes select cannot see
            if not pending or not pending():
                return
            data = sock.recv(65536)

    def _handle(self, ptype: int, flags: int, body: bytes) -> None:
        if ptype == W.PUBLISH:
            self._last_in = time.monotonic()
            topic, pid, payload, qos = W.parse_publish(flags, body, self.version)
            if not self._settled and topic.startswith(UP_PREFIX):
                self._held.append((flags, body))  # decided once settled (module docstring)
                return
            self.received += 1
            done = (lambda: self._ack(pid)) if qos else None
            if self.membership is not None and topic.startswith(HEARTBEAT_PREFIX):
                self.membership.heartbeat(topic[len(HEARTBEAT_PREFIX):], payload,
                                          time.monotonic())
                if done is not None:
                    done()
                return
            if not topic.startswith(UP_PREFIX) or (
                    (self.cfg.shards > 1 or self.cfg.auto)
                    and not self._in_shard(topic[self._up_len:], payload)):
                if done is not None:
                    done()
                return
            self.relay.handle(payload, topic[self._up_len:], LINK_NAME, done)
        elif ptype == W.PUBACK:
            pid, _reason = W.parse_puback(body)
            with self._lock:
                entry = self._inflight.pop(pid, None)
                nxt = None
                if self._backlog and len(self._inflight) < self.window:
                    topic, payload, done2 = self._backlog.popleft()
                    nxt_pid = self._take_pid()
                    self._inflight[nxt_pid] = (topic, payload, done2)
                    nxt = W.encode_publish(topic, nxt_pid, payload, version=self.version)
            if entry is not None and entry[2] is not None:
                entry[2]()
            if nxt is not None:
                self._send_now(nxt)
        elif ptype == W.SUBACK:
            pid, reasons = W.parse_suback(body, self.version)
            if any(rc >= 0x80 for rc in reasons):
                self.log.event("mqtt_subscribe_refused", level="error", reason=f"0x{reasons[0]:02x}",
                               topic=HEARTBEAT_FILTER if pid == _HB_SUB_PID else UP_PREFIX + "+")
                raise _Lost("subscription refused")
            if pid == _HB_SUB_PID:
                self._settle_at = time.monotonic() + 1.5 * self.cfg.heartbeat_s
                return
            self.connected.set()
            self._drain_backlog()
        elif ptype == W.PINGRESP:
            pass
        elif ptype == W.DISCONNECT:
            raise _Lost(f"broker sent DISCONNECT 0x{body[0] if body else 0:02x}")
        else:
            raise W.ProtocolError(f"unexpected packet type {ptype}")

    def _drain_backlog(self) -> None:
        """Send what waited while we were down, up to the window."""
        while True:
            with self._lock:
                if not self._backlog or len(self._inflight) >= self.window:
                    return
                topic, payload, done = self._backlog.popleft()
                pid = self._take_pid()
                self._inflight[pid] = (topic, payload, done)
            self._send_now(W.encode_publish(topic, pid, payload, version=self.version))

    def _in_shard(self, arrived_from: str, payload: bytes) -> bool:
        """Whether this gateway's shard owns the envelope's device. One the
        relay would reject (unreadable header) stays here to be counted."""
        device = arrived_from
        if self.relay.policy.is_peer(arrived_from):
            try:
                device = read_header(payload, len(payload)).dst
            except Rejected:
                return True
        shard = shard_of(device, self.cfg.shards)
        if self.membership is None:
            if shard == self.cfg.shard:
                return True
        elif shard in self.membership.owned:
            return True
        else:
            assert self.buffer is not None
            self.buffer.add(time.monotonic(), shard, arrived_from, payload)
        self.other_shard += 1
        return False

    def _membership_tick(self, now: float) -> None:
        """Heartbeat when due (only once the up subscription holds), expire
        silent peers, and forward again what a takeover needs."""
        assert self.membership is not None and self.buffer is not None
        if self.connected.is_set() and now - self._last_hb >= self.cfg.heartbeat_s:
            self._send_now(W.encode_publish_qos0(self._hb_topic,
                                                 heartbeat_payload(self.cfg.shards),
                                                 version=self.version))
            self._last_hb = now
        gained, since = self.membership.update(now)
        self.buffer.prune(now)
        if not self._settled and self._settle_at is not None and now >= self._settle_at:
            self._settled = True
            held, self._held = self._held, []
            self.log.event("gateway_settled", peers=",".join(self.membership.peers()),
                           owned=len(self.membership.owned), held=len(held))
            for flags, body in held:
                self._handle(W.PUBLISH, flags, body)
        peers = self.membership.peers()
        if peers != self._peers_logged:
            self.log.event("gateway_peers", peers=",".join(peers),
                           departed=",".join(sorted(set(self._peers_logged) - set(peers))),
                           owned=len(self.membership.owned))
            self._peers_logged = peers
        if gained:
            again = self.buffer.take(gained, since)
            self.log.event("shards_taken_over", shards=len(gained), replayed=len(again))
            for arrived_from, envelope in again:
                self.replayed += 1
                self.relay.handle(envelope, arrived_from, LINK_NAME, None)

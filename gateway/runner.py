"""A running gateway: the relay core, its links, metrics and the status file.

``Gateway(cfg).start()`` connects the MQTT link, opens serial links if the
config has any, starts the Prometheus endpoint and the status writer;
``stop()`` undoes all of it. ``moteseal gateway run`` and ``moteseal demo``
both use this class.

Serial links plug in through ``gateway.serial_bridge.open_links(specs,
relay, log)``, which returns objects with ``name``, ``send(dst, envelope,
done)``, ``start()``, ``stop()``, ``queue_depth()`` and ``connected``; each
feeds its inbound envelopes to ``relay.handle(envelope, arrived_from, name,
done)`` (see ``gateway.relay``).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any

from gateway.config import ConfigError, GatewayConfig
from gateway.logs import DropLog, JsonLog
from gateway.metrics import serve_metrics, write_status_file
from gateway.mqtt import MqttLink
from gateway.relay import RateLimiter, Relay, RoutePolicy, RouteTable

__all__ = ["Gateway"]


def _is_connected(link: Any) -> bool:
    state = getattr(link, "connected", False)
    if isinstance(state, threading.Event):
        return state.is_set()
    return bool(state() if callable(state) else state)


class Gateway:
    """One gateway process's worth of relay, links and observability."""

    def __init__(self, cfg: GatewayConfig, log: JsonLog | None = None) -> None:
        self.cfg = cfg
        self.log = log or JsonLog(level=cfg.log_level)
        self.started = time.time()
        for warning in cfg.warnings:
            self.log.event("config_deprecated", level="warning", message=warning)
        self.relay = Relay(RouteTable(cfg.routes), RateLimiter(cfg.rate, cfg.burst),
                           max_envelope_bytes=cfg.max_envelope_bytes,
                           on_drop=DropLog(self.log))
        self.mqtt = MqttLink(cfg.mqtt, self.relay, self.log)
        self.relay.add_link(self.mqtt.name, self.mqtt)
        self.extra_links: list[Any] = []
        if cfg.serial:
            try:
                bridge = importlib.import_module("gateway.serial_bridge")
                open_links = getattr(bridge, "open_links")
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"{cfg.source}: [[serial]]: serial links are not "
                                  f"available ({exc})") from None
            for link in open_links(cfg.serial, self.relay, self.log):
                self.relay.add_link(link.name, link)
                self.extra_links.append(link)
        # Who may address whom, and how many ids get a label (gateway.relay).
        self.relay.policy = RoutePolicy(cfg.peers, any_to_any=cfg.any_to_any)
        self.relay.stats.max_labelled = cfg.max_labelled
        self.metrics_server: Any = None
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def reload_routes(self, path: Any) -> bool:
        """Re-reads ``[routes]`` and ``[policy]`` from the config file at
        ``path`` (SIGHUP) and swaps them in at once; links, accounts and
        limits keep running. A config that does not load leaves the old
        routes in place and is logged. Returns whether it reloaded."""
        from gateway.config import load_config

        try:
            cfg = load_config(path)
            routes = RouteTable(cfg.routes)
            policy = RoutePolicy(cfg.peers, any_to_any=cfg.any_to_any)
        except Exception as exc:  # noqa: BLE001 - from a signal handler: never stop the relay
            self.log.event("routes_reload_failed", level="error", error=str(exc)[:300])
            return False
        with self.relay._lock:  # a whole envelope sees either the old table or the new
            self.relay.routes = routes
            self.relay.policy = policy
        self.log.event("routes_reloaded", links=",".join(sorted(cfg.routes)),
                       patterns=sum(len(v) for v in cfg.routes.values()))
        return True

    @property
    def metrics_port(self) -> int:
        return int(self.metrics_server.server_port) if self.metrics_server else 0

    def status(self) -> dict[str, Any]:
        """Counters, last-seen times and link states, as a JSON-able dict."""
        snap = self.relay.snapshot()
        mq = self.mqtt
        links = {mq.name: {"connected": mq.connected.is_set(), "queue_depth": mq.queue_depth(),
                           "broker": f"{mq.host}:{mq.port}", "failovers": mq.failovers,
                           "other_shard": mq.other_shard, "received": mq.received,
                           **mq.shard_status()}}
        for link in self.extra_links:
            links[link.name] = {"connected": _is_connected(link),
                                "queue_depth": int(link.queue_depth())}
            extra = getattr(link, "status_extra", None)  # serial: frame and queue drops
            if extra is not None:
                links[link.name].update(extra())
        now = time.time()
        return {"name": self.cfg.name, "pid": os.getpid(), "started": self.started,
                "updated": now, "uptime_s": round(now - self.started, 3),
                "status_interval": self.cfg.status_interval,
                "metrics_port": self.metrics_port, "links": links, **snap}

    def start(self) -> "Gateway":
        """Start links, metrics and the status writer. Raises ``OSError`` if
        the metrics port is taken."""
        if self.cfg.metrics_port:
            self.metrics_server = serve_metrics(self.status, self.cfg.metrics_host,
                                                self.cfg.metrics_port)
        self.mqtt.start()
        for link in self.extra_links:
            link.start()
        if self.cfg.status_file:
            self._status_thread = threading.Thread(target=self._write_status_loop,
                                                   name="gateway-status", daemon=True)
            self._status_thread.start()
        self.log.event("gateway_started", name=self.cfg.name, config=self.cfg.source,
                       metrics_port=self.metrics_port,
                       links=",".join([self.mqtt.name] + [x.name for x in self.extra_links]))
        if self.cfg.mqtt.share_group:
            # Only with share_group_trusted (config refuses it otherwise):
            # Mosquitto 2.0's ACL file grants every SUBSCRIBE, so a device
            # that joins this group takes its share (docs/gateway.md).
            self.log.event("share_group_trusted", level="warning",
                           share_group=self.cfg.mqtt.share_group)
        return self

    def _write_status_loop(self) -> None:
        while True:
            try:
                write_status_file(self.cfg.status_file, self.status())
            except OSError as exc:
                self.log.event("status_file_error", level="error", error=str(exc))
            if self._stop.wait(self.cfg.status_interval):
                return

    def wait_connected(self, timeout: float) -> bool:
        return self.mqtt.connected.wait(timeout)

    def stop(self) -> None:
        """Stop everything; writes a last status file."""
        self._stop.set()
        for link in self.extra_links:
            link.stop()
        self.mqtt.stop()
        if self._status_thread is not None:
            self._status_thread.join(5)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.cfg.status_file:
            try:
                final = self.status()
                final["stopped"] = True
                write_status_file(self.cfg.status_file, final)
            except OSError:
                pass
        s = self.relay.stats
        self.log.event("gateway_stopped", relayed=sum(s.relayed.values()),
                       dropped=sum(s.dropped.values()))

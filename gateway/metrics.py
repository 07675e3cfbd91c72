"""Observability: Prometheus metrics and the status file.

Both read the same numbers (``Gateway.status()``): relayed counts by link,
dropped counts by reason, per-device last-seen times, per-link queue depth
and connection state. Counters are plain ints kept by the relay core and read
at scrape time, so the hot path pays no metrics locks.

Metric names (all prefixed ``moteseal_gateway_``):
  relayed_total{link}                     envelopes forwarded, by destination link
  dropped_total{reason}                   envelopes dropped, by reason
  device_last_seen_timestamp_seconds{device}  last relayed envelope from a device
                                          (at most [policy] max_labelled ids)
  unlabelled_envelopes_total              relayed envelopes from ids beyond that bound
  queue_depth{link}                       envelopes a link holds for delivery
  link_up{link}                           1 if the link is connected
  serial_frames_dropped_total{link,reason}  serial frames failing crc/cobs/size checks
  serial_queue_dropped_total{link,reason}   queued envelopes dropped (full, expired)
  shard_takeovers_total                   shards taken over from dead gateways (shard = "auto")
  shard_replayed_total                    buffered envelopes forwarded again at a takeover
  shards_owned                            shards this gateway owns now (shard = "auto")
  gateway_peers                           other live gateways it hears (shard = "auto")
  uptime_seconds
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["StatusCollector", "serve_metrics", "write_status_file", "PREFIX"]

PREFIX = "moteseal_gateway_"


class StatusCollector(Collector):
    """Turns a ``status()`` dict into Prometheus metric families. May be
    shared between threads: it keeps no state of its own."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        s = self.status()
        relayed = CounterMetricFamily(PREFIX + "relayed", "Envelopes forwarded, by destination link",
                                      labels=["link"])
        for link, n in s["relayed_by_link"].items():
            relayed.add_metric([link], n)
        yield relayed
        dropped = CounterMetricFamily(PREFIX + "dropped", "Envelopes dropped, by reason",
                                      labels=["reason"])
        for reason, n in s["dropped"].items():
            dropped.add_metric([reason], n)
        yield dropped
        seen = GaugeMetricFamily(PREFIX + "device_last_seen_timestamp_seconds",
                                 "Wall-clock time of the last envelope relayed from a device",
                                 labels=["device"])
        for device, ts in s["last_seen"].items():
            seen.add_metric([device], ts)
        yield seen
        yield CounterMetricFamily(PREFIX + "unlabelled_envelopes",
                                  "Relayed envelopes from ids past the last-seen label bound",
                                  value=s.get("unlabelled", 0))
        depth = GaugeMetricFamily(PREFIX + "queue_depth",
                                  "Envelopes a link holds for delivery", labels=["link"])
        up = GaugeMetricFamily(PREFIX + "link_up", "1 if the link is connected", labels=["link"])
        frames = CounterMetricFamily(PREFIX + "serial_frames_dropped",
                                     "Serial frames dropped by the framing layer, by reason",
                                     labels=["link", "reason"])
        qdrop = CounterMetricFamily(PREFIX + "serial_queue_dropped",
                                    "Queued envelopes dropped (full, expired)",
                                    labels=["link", "reason"])
        for link, info in s["links"].items():
            depth.add_metric([link], info["queue_depth"])
            up.add_metric([link], 1 if info["connected"] else 0)
            for reason, n in info.get("frame_drops", {}).items():
                frames.add_metric([link, reason], n)
            for reason, n in info.get("queue_dropped", {}).items():
                qdrop.add_metric([link, reason], n)
        yield depth
        yield up
        yield frames
        yield qdrop
        auto = s["links"].get("mqtt", {})
        if "owned_shards" in auto:
            yield CounterMetricFamily(PREFIX + "shard_takeovers",
                                      "Shards taken over from dead gateways",
                                      value=auto["takeovers"])
            yield CounterMetricFamily(PREFIX + "shard_replayed",
                                      "Buffered envelopes forwarded again at a takeover",
                                      value=auto["replayed"])
            yield GaugeMetricFamily(PREFIX + "shards_owned", "Shards this gateway owns",
                                    value=len(auto["owned_shards"]))
            yield GaugeMetricFamily(PREFIX + "gateway_peers", "Other live gateways heard",
                                    value=len(auto["peers"]))
        yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the gateway started",
                                value=s["uptime_s"])


def serve_metrics(status: Callable[[], dict[str, Any]], host: str, port: int) -> Any:
    """Start the Prometheus endpoint on ``host:port`` in a daemon thread and
    return the server (``.shutdown()`` stops it; ``.server_port`` is the
    bound port, useful with ``port=0``). Raises ``OSError`` if the port is taken."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def write_status_file(path: str | Path, status: dict[str, Any]) -> None:
    """Write ``status`` as JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

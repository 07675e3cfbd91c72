"""Prometheus metrics of a running hub (docs/hub.md, "Metrics"): readings,
handshakes, refusals by reason, duplicates, live sessions, sink backlog and
errors. Ids of unknown devices never become labels (only provisioned
devices' refusals are read from the registry, and only as totals by
reason); no value is ever secret.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

Hub = Any  # moteseal.hub.service.Hub, which imports this module

COUNTS = {
    "telemetry": ("moteseal_hub_readings", "Readings stored and handed to the sinks"),
    "handshakes": ("moteseal_hub_handshakes", "Handshake message 1s answered"),
    "hints": ("moteseal_hub_hints", "Unknown-session hints sent (e.g. after a restart)"),
    "rejected": ("moteseal_hub_rejected", "Envelopes dropped as malformed or not for us"),
    "duplicates": ("moteseal_hub_duplicates", "Readings received again and acknowledged again"),
    "store_errors": ("moteseal_hub_store_errors", "Readings the store could not write (not acknowledged)"),
    "lost": ("moteseal_hub_lost", "Readings devices evicted before they reached the hub"),
    "unstored": ("moteseal_hub_unstored", "Message 1s refused because the registry could not write"),
}


class HubCollector:
    """Reads the hub's counters at scrape time (no second bookkeeping)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        hub = self.hub
        counts = hub.listener.counts if hub.listener is not None else {}
        for key, (name, doc) in COUNTS.items():
            yield CounterMetricFamily(name, doc, value=counts.get(key, 0))
        refusals = CounterMetricFamily("moteseal_hub_refusals", "Message 1s refused, by reason",
                                       labels=["reason"])
        by_reason: dict[str, int] = {}
        if hub.registry is not None:
            try:
                for row in hub.registry.refusals():
                    by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["count"]
            except Exception:  # noqa: BLE001 - a busy registry: report what we have
                pass
        for reason, n in sorted(by_reason.items()):
            refusals.add_metric([reason], n)
        yield refusals
        lag = SummaryMetricFamily("moteseal_hub_ack_lag_seconds",
                                  "From a decrypted reading to its acknowledgement on the wire "
                                  "(the durable store commit is most of it)")
        if hub.listener is not None:
            lag.add_metric([], count_value=hub.listener.acks, sum_value=hub.listener.ack_seconds)
        yield lag
        yield GaugeMetricFamily("moteseal_hub_sessions", "Devices with a live session",
                                value=len(hub.sessions_info()))
        backlog = GaugeMetricFamily("moteseal_hub_sink_backlog", "Readings a sink has not handled yet",
                                    labels=["sink"])
        errors = CounterMetricFamily("moteseal_hub_sink_errors", "Sink failures (each retried)",
                                     labels=["sink"])
        for w in hub.workers:
            backlog.add_metric([w.sink.name], w.backlog())
            errors.add_metric([w.sink.name], w.errors)
        yield backlog
        yield errors


def registry_for(hub: Hub) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HubCollector(hub))  # type: ignore[arg-type]
    return reg


def render(hub: Hub) -> bytes:
    return generate_latest(registry_for(hub))


def serve_metrics(hub: Hub, bind: str, port: int) -> None:
    start_http_server(port, addr=bind, registry=registry_for(hub))

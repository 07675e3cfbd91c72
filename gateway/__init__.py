"""The moteseal gateway: a blind relay of envelopes between links.

It decodes only the outer envelope (with cbor2) to route, and imports no key,
session or decryption code: nothing from ``device`` but the serial framing
(``tests/gateway/test_gateway_relay.py`` enforces that).

Public surface: the relay core below (no I/O); ``gateway.mqtt.MqttLink`` and
``gateway.serial_bridge`` are its links, ``gateway.runner.Gateway`` runs them,
``gateway.broker`` manages Mosquitto accounts, ``gateway.cluster`` a NATS
cluster's configuration and processes, ``gateway.shard`` the device-id
shard function. Docs: docs/gateway.md, docs/scaling.md.
"""

from gateway.envelope import DEFAULT_MAX_ENVELOPE_BYTES, Header, Rejected, read_header
from gateway.relay import DROP_REASONS, Link, RateLimiter, Relay, RouteTable

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "DROP_REASONS",
    "Header",
    "Link",
    "RateLimiter",
    "Rejected",
    "Relay",
    "RouteTable",
    "read_header",
]

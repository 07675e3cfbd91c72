"""The MQTT 3.1.1 form of the gateway's packets (byte tables, OASIS MQTT
3.1.1 sections 3.1-3.9), and the broker list: both MQTT clients (the
gateway's, and ``moteseal.links.mqtt_link`` on paho) skip a dead node and
come up on the next one, against a real Mosquitto. The cluster itself is in
test_cluster.py."""

from __future__ import annotations

import time

import cbor2

from gateway import mqtt_wire as W
from gateway.broker import free_port
from gateway.config import ConfigError, MqttConfig, parse_config
from gateway.logs import JsonLog
from gateway.mqtt import MqttLink as GatewayLink
from gateway.relay import RateLimiter, Relay, RouteTable
from moteseal.links.mqtt_link import MqttLink

ACCOUNTS = {"gw": "gateway", "hub": "device", "s1": "device"}


def test_mqtt_311_packets_carry_no_properties():
    assert W.encode_publish(b"a/b", 7, b"hi", version=4) == bytes.fromhex("32 09 0003 612f62 0007 6869")
    assert W.encode_subscribe(1, "a/+", 1, version=4) == bytes.fromhex("82 08 0001 0003 612f2b 01")
    pkt = W.encode_connect("gw1", 30, clean_start=False, session_expiry=3600, receive_maximum=100,
                           max_packet=4096, username="u", password="p", version=4)
    assert pkt == bytes.fromhex("10 15 0004 4d515454 04 c0 001e 0003 677731 0001 75 0001 70")
    assert W.parse_publish(0x2, bytes.fromhex("0003 612f62 0007 6869"), 4) == ("a/b", 7, b"hi", 1)
    assert W.parse_connack(bytes([1, 0]), 4) == (True, 0, {})
    assert W.parse_connack(bytes([0, 5]), 4)[1] == 0x85  # not authorised: >= 0x80, a refusal
    assert W.parse_suback(bytes.fromhex("0001 80"), 4) == (1, [0x80])


def test_config_reads_a_broker_list_and_refuses_what_311_cannot_do():
    cfg = parse_config({"mqtt": {"hosts": ["10.0.0.1:1883", "[::1]:1884"], "protocol": "3.1.1",
                                 "shards": 3, "shard": 2}})
    assert (cfg.mqtt.hosts, cfg.mqtt.protocol, cfg.mqtt.shards) == (
        [("10.0.0.1", 1883), ("::1", 1884)], 4, 3)
    for bad, key in (({"hosts": ["nohost"]}, "hosts"), ({"protocol": "4"}, "protocol"),
                     ({"shards": 2, "shard": 2}, "shard"),
                     ({"protocol": "3.1.1", "share_group": "g", "share_group_trusted": True},
                      "share_group")):
        try:
            parse_config({"mqtt": bad})
        except ConfigError as exc:
            assert f"[mqtt] {key}:" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def test_the_gateway_skips_a_dead_node_and_relays_on_the_next(mosquitto, mqtt_client):
    broker = mosquitto(accounts=ACCOUNTS)
    hub = mqtt_client(broker, "hub")
    hub.subscribe("moteseal/v1/down/hub")
    cfg = MqttConfig(hosts=[("127.0.0.1", free_port()), ("127.0.0.1", broker.port)],
                     username="gw", password=broker.passwords["gw"], client_id="fo-test",
                     session_expiry=0)
    relay = Relay(RouteTable({"mqtt": ["*"]}), RateLimiter(0, 1))
    link = GatewayLink(cfg, relay, JsonLog(open("/dev/null", "w")))
    relay.add_link(link.name, link)
    t0 = time.monotonic()
    link.start()
    try:
        assert link.connected.wait(10)
        assert time.monotonic() - t0 < 1.0  # the next node at once, not after a backoff
        assert (link.host, link.port, link.failovers) == ("127.0.0.1", broker.port, 1)
        s1 = mqtt_client(broker, "s1")
        s1.publish("moteseal/v1/up/s1", cbor2.dumps([6, b"s1", b"hub", 1, 0, b"\x5a" * 40]))
        assert len(hub.collect(1, timeout=10)) == 1
    finally:
        link.stop()


def test_the_paho_link_skips_a_dead_node(mosquitto):
    broker = mosquitto(accounts=ACCOUNTS)
    link = MqttLink("s1", username="s1", password=broker.passwords["s1"],
                    hosts=[("127.0.0.1", free_port()), ("127.0.0.1", broker.port)])
    try:
        link.start(10)
        assert (link.host, link.port) == ("127.0.0.1", broker.port)
        assert link.connected.is_set()
    finally:
        link.close()

"""Automatic shard ownership as pure functions (gateway/shard.py rendezvous,
gateway/membership.py live set and takeover buffer), the heartbeat's wire
form, and the configuration of ``shard = "auto"``. The running gateways
are in test_gateway_takeover.py."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, strategies as st

from gateway import mqtt_wire as W
from gateway.config import ConfigError, parse_config
from gateway.membership import (Membership, TakeoverBuffer, heartbeat_payload,
                                parse_heartbeat, valid_member_name)
from gateway.shard import owned_shards, owner_of, weight
from moteseal.hub import shard as hub_shard

NAMES = ["moteseal-gateway-gw1", "moteseal-gateway-gw2", "moteseal-gateway-gw3", "gw-x", "gw_y"]


def test_the_rendezvous_weight_is_the_documented_sha256_prefix():
    import hashlib

    assert weight(5, "gw1") == hashlib.sha256(b"5/gw1").digest()[:8]
    # The hub workers' scheme, so both split 64 shards the same way.
    for live in (NAMES[:2], NAMES[:3], NAMES):
        for s in range(64):
            assert owner_of(s, live) == hub_shard.owner_of(s, live)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_live_gateways_own_every_shard_exactly_once(n):
    live = NAMES[:n]
    owned = [owned_shards(g, live, 64) for g in live]
    assert sum(len(o) for o in owned) == 64
    assert frozenset().union(*owned) == frozenset(range(64))
    if n > 1:
        assert all(o for o in owned)  # 64 shards: everyone gets some


def test_a_departure_moves_only_the_departed_gateways_shards_and_a_return_takes_them_back():
    for live in itertools.combinations(NAMES, 3):
        for gone in live:
            rest = [g for g in live if g != gone]
            for g in rest:
                before, after = owned_shards(g, live, 64), owned_shards(g, rest, 64)
                assert before <= after  # nothing moves between survivors
                assert after - before <= owned_shards(gone, live, 64)
            # Back: exactly its shards again (the function of the set alone).
            assert owned_shards(gone, live, 64) == frozenset(
                s for s in range(64) if owner_of(s, live) == gone)


def test_a_gateway_alone_owns_every_shard_and_a_join_only_shrinks_its_share():
    m = Membership("a", 64, timeout_s=3.0, replay_s=2.0)
    assert m.owned == frozenset(range(64))
    m.heartbeat("b", b"up 64", now=10.0)
    gained, _since = m.update(10.0)
    assert gained == frozenset() and m.takeovers == 0
    assert m.owned == owned_shards("a", ["a", "b"], 64) and m.peers() == ["b"]


def test_silence_past_the_timeout_is_a_departure_and_the_replay_starts_before_the_last_beat():
    m = Membership("a", 64, timeout_s=3.0, replay_s=2.0)
    m.heartbeat("b", b"up 64", now=10.0)
    m.update(10.0)
    m.heartbeat("b", b"up 64", now=11.0)
    assert m.update(13.9)[0] == frozenset()  # 2.9 s of silence: still live
    gained, since = m.update(14.0)
    assert gained == owned_shards("b", ["a", "b"], 64)
    assert since == 11.0 - 2.0
    assert m.owned == frozenset(range(64)) and m.takeovers == len(gained)
    assert m.update(20.0)[0] == frozenset()  # counted once


def test_a_down_heartbeat_hands_over_at_once_and_an_up_takes_the_shards_back():
    m = Membership("a", 64, timeout_s=3.0, replay_s=2.0)
    m.heartbeat("b", b"up 64", now=5.0)
    m.update(5.0)
    m.heartbeat("b", b"down", now=5.5)
    gained, since = m.update(5.5)
    assert gained and since == 3.0 and m.peers() == []
    m.heartbeat("b", b"up 64", now=7.0)
    assert m.update(7.0)[0] == frozenset()
    assert m.owned == owned_shards("a", ["a", "b"], 64)
    m.heartbeat("c", b"down", now=8.0)  # never heard: nothing to hand over
    assert m.update(8.0)[0] == frozenset()


@pytest.mark.parametrize("peer, payload, counter", [
    ("b", b"up", "bad_heartbeats"), ("b", b"up 0", "bad_heartbeats"),
    ("b", b"up -1", "bad_heartbeats"), ("b", b"UP 64", "bad_heartbeats"),
    ("b", b"up 64 " + b"9" * 20, "bad_heartbeats"), ("b", b"\xff\xfe", "bad_heartbeats"),
    ("b.c", b"up 64", "bad_heartbeats"), ("", b"up 64", "bad_heartbeats"),
    ("b", b"up 32", "shard_mismatch")])
def test_a_bad_heartbeat_is_counted_and_changes_nothing(peer, payload, counter):
    m = Membership("a", 64, timeout_s=3.0, replay_s=2.0)
    m.heartbeat(peer, payload, now=1.0)
    assert m.update(1.0) == (frozenset(), 1.0)
    assert m.peers() == [] and m.owned == frozenset(range(64))
    assert getattr(m, counter) == 1


def test_our_own_heartbeat_is_not_a_peer():
    m = Membership("a", 64, timeout_s=3.0, replay_s=2.0)
    m.heartbeat("a", heartbeat_payload(64), now=1.0)
    m.update(1.0)
    assert m.peers() == [] and m.bad_heartbeats == 0


@given(st.binary(max_size=40))
def test_parse_heartbeat_returns_a_count_or_raises_value_error(payload):
    try:
        n = parse_heartbeat(payload)
    except ValueError:
        return
    if n == 0:
        assert payload == b"down"
    else:
        assert payload.startswith(b"up ") and int(payload[3:]) == n >= 1


def test_the_buffer_keeps_a_bounded_window_and_gives_back_only_what_a_takeover_needs():
    buf = TakeoverBuffer(max_count=4, max_age=10.0)
    for i in range(6):
        buf.add(float(i), i % 2, f"d{i}", bytes([i]))
    assert len(buf) == 4 and buf.evicted == 2  # the two oldest went first
    buf.prune(13.5)  # t=2 and t=3 are older than 10 s
    assert len(buf) == 2
    assert buf.take(frozenset({1}), since=5.0) == [("d5", b"\x05")]
    assert buf.take(frozenset({0}), since=5.0) == []  # d4 at t=4: before the look-back
    assert len(buf) == 0  # taken shards' entries leave the buffer either way


def test_connect_carries_the_will_and_a_heartbeat_is_a_qos0_publish():
    pkt = W.encode_connect("g", 30, clean_start=False, session_expiry=0, receive_maximum=1,
                           max_packet=1, version=4, will=("w/g", b"down"))
    # flags 0x04: will, QoS 0, not retained; then client id, will topic, will payload.
    assert pkt == bytes.fromhex("10 18 0004 4d515454 04 04 001e 0001 67 0003 772f67 0004 646f776e")
    v5 = W.encode_connect("g", 30, clean_start=False, session_expiry=0, receive_maximum=1,
                          max_packet=1, version=5, will=("w/g", b"down"))
    assert v5.endswith(bytes.fromhex("0001 67 00 0003 772f67 0004 646f776e"))  # empty will props
    assert W.encode_publish_qos0(b"a/b", b"up 64", version=4) == bytes.fromhex("30 0a 0003 612f62 7570203634")
    assert W.parse_publish(0x0, bytes.fromhex("0003 612f62 00 7570203634"), 5) == ("a/b", 0, b"up 64", 0)


def test_config_reads_auto_and_refuses_what_it_cannot_do():
    cfg = parse_config({"gateway": {"name": "gw1"}, "mqtt": {"shard": "auto"}})
    m = cfg.mqtt
    assert (m.auto, m.shards, m.heartbeat_s, m.peer_timeout_s, m.takeover_replay_s,
            m.takeover_buffer) == (True, 64, 1.0, 3.0, 2.0, 20000)
    assert valid_member_name(m.client_id)
    for bad, key in (({"shard": "auto", "client_id": "gw.1"}, "client_id"),
                     ({"shard": "any"}, "shard"),
                     ({"shard": "auto", "heartbeat_s": 2.0, "peer_timeout_s": 3.0}, "peer_timeout_s"),
                     ({"shard": "auto", "share_group": "g", "share_group_trusted": True}, "shards")):
        with pytest.raises(ConfigError, match=rf"\[mqtt\] {key}:"):
            parse_config({"mqtt": bad})


def test_status_and_prometheus_show_the_owned_shards_peers_and_takeovers():
    from gateway.metrics import StatusCollector
    from gateway.runner import Gateway

    gw = Gateway(parse_config({"gateway": {"name": "gw1"}, "mqtt": {"shard": "auto"}}))
    link = gw.mqtt.shard_status()
    assert (len(link["owned_shards"]), link["peers"], link["takeovers"]) == (64, [], 0)
    assert gw.status()["links"]["mqtt"]["shards"] == 64
    metrics = {m.name: m.samples[0].value for m in StatusCollector(gw.status).collect()
               if m.samples and not m.samples[0].labels}
    assert metrics["moteseal_gateway_shards_owned"] == 64
    assert metrics["moteseal_gateway_gateway_peers"] == 0
    assert metrics["moteseal_gateway_shard_takeovers"] == 0  # the family name; the sample is _total
    static = Gateway(parse_config({"mqtt": {"shards": 2, "shard": 1}}))
    assert "owned_shards" not in static.status()["links"]["mqtt"]
    assert "moteseal_gateway_shards_owned" not in {m.name for m in StatusCollector(static.status).collect()}
    for g in (gw, static):  # never started: this closes the links' wake-up sockets
        g.mqtt.stop()

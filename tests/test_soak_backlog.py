"""A backlog larger than a link's inbox (issue 8, soak findings).

The peer (``moteseal peer listen``) reads its MQTT link with ``recv()``. When
it comes back after a while away, the broker hands it the whole backlog its
persistent session kept. Every message in it was acknowledged to its sender
long ago, so each must reach the application, even one that is busy for a
moment while the backlog pours in; none may be dropped after the link
acknowledged it to the broker.
"""

from __future__ import annotations

import time

import pytest

from device.mqtt_link import MqttLink

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]


def test_a_peer_back_to_a_large_backlog_gets_every_message(mosquitto, mqtt_client):
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "hub": "device"})
    link = MqttLink("hub", "127.0.0.1", broker.port, username="hub",
                    password=broker.passwords["hub"]).start()
    link.close()  # the peer goes away; its session (and subscription) stays
    gw = mqtt_client(broker, user="gw")
    n = 1500
    for i in range(n):
        assert gw.publish("moteseal/v1/down/hub", b"envelope-%d" % i) == 0  # PUBACKed
    link = MqttLink("hub", "127.0.0.1", broker.port, username="hub",
                    password=broker.passwords["hub"]).start()
    try:
        # The application is busy for a moment (opening its registry, say)
        # while paho takes the backlog in.
        time.sleep(2.0)
        got = []
        while True:
            env = link.recv(timeout=3.0)
            if env is None:
                break
            got.append(env)
        # Exactly once: a broker redelivery of an envelope still waiting in
        # the inbox is not queued twice.
        assert sorted(got) == sorted(b"envelope-%d" % i for i in range(n))
    finally:
        link.close()


def test_a_full_inbox_stalls_the_link_instead_of_dropping(mosquitto, mqtt_client):
    # Receive Maximum (100) above the inbox (10): the broker may send more than
    # the inbox holds, so the network thread has to wait for the reader.
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "hub": "device"})
    kw = dict(username="hub", password=broker.passwords["hub"], max_inflight=100, inbox_size=10)
    link = MqttLink("hub", "127.0.0.1", broker.port, **kw).start()
    link.close()
    gw = mqtt_client(broker, user="gw")
    n = 300
    for i in range(n):
        assert gw.publish("moteseal/v1/down/hub", b"e-%d" % i) == 0
    link = MqttLink("hub", "127.0.0.1", broker.port, **kw).start()
    try:
        deadline = time.monotonic() + 10
        while link.stalls == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.stalls >= 1 and link.received == 11  # 10 queued, 1 waiting
        time.sleep(0.3)
        assert link.received == 11  # still waiting: nothing dropped, nothing more read
        got = []
        while True:
            env = link.recv(timeout=3.0)
            if env is None:
                break
            got.append(env)
        assert sorted(got) == sorted(b"e-%d" % i for i in range(n))
    finally:
        link.close()


def test_a_link_closed_while_stalled_leaves_the_rest_to_the_broker(mosquitto, mqtt_client):
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "hub": "device"})
    kw = dict(username="hub", password=broker.passwords["hub"], max_inflight=50, inbox_size=5)
    link = MqttLink("hub", "127.0.0.1", broker.port, **kw).start()
    link.close()
    gw = mqtt_client(broker, user="gw")
    n = 40
    for i in range(n):
        assert gw.publish("moteseal/v1/down/hub", b"e-%d" % i) == 0
    link = MqttLink("hub", "127.0.0.1", broker.port, **kw).start()
    first = [link.recv(timeout=5.0) for _ in range(3)]  # read and acknowledged
    deadline = time.monotonic() + 10
    while link.stalls == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.stalls >= 1
    link.close()  # the waiting thread gives up; nothing it held was acknowledged
    link = MqttLink("hub", "127.0.0.1", broker.port, username="hub",
                    password=broker.passwords["hub"]).start()
    try:
        rest = []
        while True:
            env = link.recv(timeout=2.0)
            if env is None:
                break
            rest.append(env)
        assert None not in first
        assert set(first) | set(rest) == {b"e-%d" % i for i in range(n)}
        assert not set(first) & set(rest)  # acknowledged ones are not sent again
    finally:
        link.close()

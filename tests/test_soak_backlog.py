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
        deadline = time.monotonic() + 30
        while link.received + link.dropped < n and time.monotonic() < deadline:
            time.sleep(0.05)
        got = []
        while True:
            env = link.recv(timeout=3.0)
            if env is None:
                break
            got.append(env)
        assert link.dropped == 0
        assert sorted(got) == sorted(b"envelope-%d" % i for i in range(n))
    finally:
        link.close()

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

from moteseal.links.mqtt_link import MqttLink

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]


def _back_to_a_backlog(mosquitto, mqtt_client, n: int, **kw):
    """The hub's link subscribes and goes away (its session and subscription
    stay), the gateway publishes ``n`` envelopes to it (each PUBACKed, so
    the broker holds them), and the hub comes back with ``kw``. Returns the
    link, the envelopes sent, and a function that opens another hub link."""
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "hub": "device"})

    def hub(**options) -> MqttLink:
        return MqttLink("hub", "127.0.0.1", broker.port, username="hub",
                        password=broker.passwords["hub"], **options).start()
    hub(**kw).close()
    gw = mqtt_client(broker, user="gw")
    sent = {b"envelope-%d" % i for i in range(n)}
    for env in sent:
        assert gw.publish("moteseal/v1/down/hub", env) == 0  # PUBACKed
    return hub(**kw), sent, hub


def _drain(link: MqttLink, timeout: float = 3.0) -> list[bytes]:
    got = []
    while (env := link.recv(timeout=timeout)) is not None:
        got.append(env)
    return got


def _wait_for_a_stall(link: MqttLink) -> None:
    deadline = time.monotonic() + 10
    while link.stalls == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.stalls >= 1


def test_a_peer_back_to_a_large_backlog_gets_every_message(mosquitto, mqtt_client):
    link, sent, _ = _back_to_a_backlog(mosquitto, mqtt_client, 1500)
    try:
        # The application is busy for a moment (opening its registry, say)
        # while paho takes the backlog in.
        time.sleep(2.0)
        got = _drain(link)
        # Exactly once: a broker redelivery of an envelope still waiting in
        # the inbox is not queued twice.
        assert sorted(got) == sorted(sent)
    finally:
        link.close()


def test_a_full_inbox_stalls_the_link_instead_of_dropping(mosquitto, mqtt_client):
    # Receive Maximum (100) above the inbox (10): the broker may send more than
    # the inbox holds, so the network thread has to wait for the reader.
    link, sent, _ = _back_to_a_backlog(mosquitto, mqtt_client, 300,
                                       max_inflight=100, inbox_size=10)
    try:
        _wait_for_a_stall(link)
        assert link.received == 11  # 10 queued, 1 waiting
        time.sleep(0.3)
        assert link.received == 11  # still waiting: nothing dropped, nothing more read
        assert sorted(_drain(link)) == sorted(sent)
    finally:
        link.close()


def test_a_link_closed_while_stalled_leaves_the_rest_to_the_broker(mosquitto, mqtt_client):
    link, sent, hub = _back_to_a_backlog(mosquitto, mqtt_client, 40, max_inflight=50, inbox_size=5)
    first = [link.recv(timeout=5.0) for _ in range(3)]  # read and acknowledged
    _wait_for_a_stall(link)
    link.close()  # the waiting thread gives up; nothing it held was acknowledged
    link = hub()
    try:
        rest = _drain(link, timeout=2.0)
        assert None not in first
        assert set(first) | set(rest) == sent
        assert not set(first) & set(rest)  # acknowledged ones are not sent again
    finally:
        link.close()

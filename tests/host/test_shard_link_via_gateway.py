"""``ShardLink`` behind gateways (``[shards] via = "gateway"``): a worker
reads the peer's down topic, where the gateways forward what devices send
to the peer, keeps only the envelopes of devices it holds, and replies on
the peer's up topic, which the gateways route by ``dst``. On a real
Mosquitto; the whole path with NATS, gateways and a kill is
tests/e2e/test_scale_out.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device import envelope as E
from moteseal.hub.config import HubConfigError, load
from moteseal.hub.shard_link import ShardLink

pytestmark = pytest.mark.mosquitto


def _envelope(src: bytes, dst: bytes) -> bytes:
    return E.encode(E.HEAD_HS2, src, dst, 7, b"\x00" * 48)


@pytest.mark.parametrize("protocol", [5, 4])
def test_a_worker_behind_gateways_keeps_only_its_devices_and_replies_to_the_gateways(
        mosquitto, mqtt_client, protocol: int) -> None:
    broker = mosquitto(auth=False)
    link = ShardLink("hub", "w1", [("127.0.0.1", broker.port)], via_gateway=True,
                     protocol=protocol).start()
    probe = mqtt_client(broker)
    try:
        link.set_devices(["d1", "d2"])
        probe.subscribe("moteseal/v1/up/+")
        probe.subscribe("moteseal/v1/down/+")
        time.sleep(0.3)  # the probe's SUBSCRIBEs are on their way before it publishes
        # A gateway forwards to the peer's down topic; d3 is another worker's,
        # the last is not an envelope: both acknowledged to the broker and counted.
        for src in (b"d1", b"d3", b"d2"):
            probe.publish("moteseal/v1/down/hub", _envelope(src, b"hub"))
        probe.publish("moteseal/v1/down/hub", b"\xff not an envelope")
        got = sorted(bytes(E.decode(link.recv(5)).src) for _ in range(2))
        assert got == [b"d1", b"d2"] and link.recv(0.5) is None
        deadline = time.monotonic() + 10
        while link.dropped < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.dropped == 2
        # A device's own up topic is not read in this mode (the gateways do).
        probe.publish("moteseal/v1/up/d1", _envelope(b"d1", b"hub"))
        assert link.recv(1.0) is None
        while not probe.messages.empty():
            probe.messages.get()
        link.send(_envelope(b"hub", b"d1"))
        topic, _ = probe.messages.get(timeout=10)
        assert topic == "moteseal/v1/up/hub"  # the gateways route it to d1
    finally:
        link.close()


def test_via_and_protocol_keys_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "hub.toml"
    base = '[registry]\nurl = "postgresql://hub@db/x"\n'
    p.write_text(base + '[mqtt]\nprotocol = "3.1.1"\n[shards]\nvia = "gateway"\n')
    cfg = load(p)
    assert cfg.get("mqtt", "protocol") == "3.1.1" and cfg.get("shards", "via") == "gateway"
    p.write_text(base)
    assert load(p).get("mqtt", "protocol") == "5" and load(p).get("shards", "via") == "direct"
    p.write_text(base + '[shards]\nvia = "broker"\n')
    with pytest.raises(HubConfigError, match=r"\[shards\] via"):
        load(p)
    p.write_text(base + '[mqtt]\nprotocol = "4"\n')
    with pytest.raises(HubConfigError, match=r"\[mqtt\] protocol"):
        load(p)

"""The sharded worker's parts that the end-to-end kill test does not reach:
``ShardLink`` (which topics it reads, where it writes, broker failover on a
real Mosquitto pair), the hub.toml keys of a sharded deployment, and
``moteseal hub registry-copy`` into a real PostgreSQL."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from device import envelope as E
from moteseal.hub.config import HubConfigError, load
from moteseal.hub.shard_link import ShardLink
from tests.cli_fleet import run
from tests.polling import wait_until

pytestmark = pytest.mark.mosquitto


def _envelope(src: bytes, dst: bytes) -> bytes:
    return E.encode(E.HEAD_HS2, src, dst, 7, b"\x00" * 48)


def test_the_link_reads_only_held_devices_and_replies_on_their_down_topics(mosquitto, mqtt_client) -> None:
    broker = mosquitto(auth=False)
    link = ShardLink("hub", "w1", [("127.0.0.1", broker.port)]).start()
    probe = mqtt_client(broker)
    try:
        link.set_devices(["d1", "d2"])
        probe.subscribe("moteseal/v1/down/+")
        time.sleep(0.3)  # the SUBSCRIBE is on its way before the probe publishes
        for dev in ("d1", "d2", "d3"):
            probe.publish(f"moteseal/v1/up/{dev}", _envelope(dev.encode(), b"hub"))
        got = sorted(bytes(E.decode(link.recv(5)).src) for _ in range(2))
        assert got == [b"d1", b"d2"] and link.recv(0.5) is None  # d3 is another worker's
        link.set_devices(["d1"])
        time.sleep(0.3)
        probe.publish("moteseal/v1/up/d2", _envelope(b"d2", b"hub"))
        assert link.recv(1.0) is None and not link.holds("d2")
        link.send(_envelope(b"hub", b"d1"))
        topic, _ = probe.messages.get(timeout=10)
        assert topic == "moteseal/v1/down/d1"
    finally:
        link.close()


def test_the_link_fails_over_to_the_next_broker(mosquitto, mqtt_client) -> None:
    a, b = mosquitto(auth=False), mosquitto(auth=False)
    dead = a.port
    a.stop()
    link = ShardLink("hub", "w1", [("127.0.0.1", dead), ("127.0.0.1", b.port), ("127.0.0.1", dead)])
    link.start(timeout=5)  # the first address refuses: the second answers
    try:
        assert link.port == b.port
        link.set_devices(["d1"])
        b.stop()  # b dies; the link goes round the list and finds b again once it is back
        assert wait_until(lambda: not link.connected.is_set(), 10, step=0.05)
        b.start()
        assert wait_until(lambda: link.connected.is_set(), 60, step=0.05), "no reconnect"
        probe = mqtt_client(b)
        time.sleep(0.3)
        probe.publish("moteseal/v1/up/d1", _envelope(b"d1", b"hub"))
        assert bytes(E.decode(link.recv(10)).src) == b"d1"  # resubscribed after the reconnect
    finally:
        link.close()


def test_sharded_config_keys_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTESEAL_REGISTRY_URL", raising=False)
    p = tmp_path / "hub.toml"
    p.write_text('[registry]\nurl = "postgresql://hub@db/x"\n[mqtt]\nbrokers = ["a:1883", "b.lan:1884"]\n'
                 "[shards]\ncount = 32\n")
    cfg = load(p)
    assert cfg.get("mqtt", "brokers") == ["a:1883", "b.lan:1884"] and cfg.get("shards", "count") == 32
    assert cfg.get("shards", "lease_seconds") == 5.0 and cfg.get("shards", "renew_seconds") == 1.0
    p.write_text('[registry]\nurl = "postgresql://hub@db/x"\n[mqtt]\nbrokers = ["no port"]\n')
    with pytest.raises(HubConfigError, match="brokers"):
        load(p)
    p.write_text("[dashboard]\nenabled = false\n")
    with pytest.raises(HubConfigError, match=r"\[hub\] registry is required"):
        load(p)
    monkeypatch.setenv("MOTESEAL_REGISTRY_URL", "postgresql://hub@db/x")
    assert load(p).get("hub", "registry") == ""


def test_registry_copy_moves_a_provisioned_sqlite_registry(tmp_path: Path, pg_dsn: str) -> None:
    from moteseal.keys.registry_pg import PgRegistry
    env = dict(os.environ, MOTESEAL_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    reg = str(tmp_path / "hub.sqlite")
    r = run("keygen", "--out", str(tmp_path / "hub.key"), "--peer", "hub", "--registry", reg, env=env)
    assert r.returncode == 0, r.stderr
    for d in ("c-1", "c-2"):
        r = run("provision", d, "--registry", reg, "--out", str(tmp_path / f"{d}.bundle"), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "hub.toml").write_text("[dashboard]\nenabled = false\n")
    r = run("hub", "registry-copy", "--config", str(tmp_path / "hub.toml"), "--from", reg,
            env=dict(env, MOTESEAL_REGISTRY_URL=pg_dsn))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied 2 device(s)" in r.stdout and pg_dsn not in r.stdout + r.stderr
    dst = PgRegistry(pg_dsn)
    try:
        assert dst.device_ids() == [b"c-1", b"c-2"] and dst.psk_for(b"c-1") is not None
    finally:
        dst.close()
    r = run("hub", "registry-copy", "--config", str(tmp_path / "hub.toml"), "--from", reg,
            env=dict(env, MOTESEAL_REGISTRY_URL=pg_dsn))
    assert r.returncode == 2 and "already holds" in r.stderr


def test_one_hub_run_or_workers_per_postgresql_registry(tmp_path: Path, pg_dsn: str, mosquitto,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from device.errors import LocalError
    from moteseal.hub.service import Hub
    from moteseal.hub.worker import ShardWorker
    from moteseal.keys.keyfile import generate_keypair, write_key_file
    from moteseal.keys.registry_pg import PgRegistry

    broker = mosquitto(auth=False)
    kp = generate_keypair()
    write_key_file(tmp_path / "hub.key", kp)
    reg = PgRegistry(pg_dsn, create_for_peer=b"hub")
    reg.add_peer_key(kp.pub, tmp_path / "hub.key")
    reg.close()
    monkeypatch.setenv("MOTESEAL_REGISTRY_URL", pg_dsn)
    (tmp_path / "hub.toml").write_text(f"[mqtt]\nport = {broker.port}\n[dashboard]\nenabled = false\n")
    cfg = load(tmp_path / "hub.toml")
    hub = Hub(cfg).start()
    try:
        assert isinstance(hub.registry, PgRegistry)  # `hub run` on the PostgreSQL registry
        with pytest.raises(LocalError, match="another hub or sharded workers"):
            Hub(cfg).start()
        with pytest.raises(LocalError, match="a single hub"):
            ShardWorker(cfg, "w1").start()
    finally:
        hub.close()
    worker = ShardWorker(cfg, "w1").start()  # free again once the hub stopped
    try:
        with pytest.raises(LocalError, match="another hub or sharded workers"):
            Hub(cfg).start()
    finally:
        worker.close()

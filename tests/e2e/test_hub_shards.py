"""Sharded hub workers with failover, end to end: a real PostgreSQL (the
registry, the readings, the leases), a real Mosquitto, three `moteseal hub
worker` processes, and 30 simulated sensors with retention (one process,
one thread, moteseal.sim). One worker is SIGKILLed mid-run. Its shards must
be taken over within a bounded time, and every reading of every sensor
must be in the shared readings table exactly once.

The DSN (with its password) reaches the workers in their environment
($MOTESEAL_REGISTRY_URL), never in argv. Each worker's broker list starts
with a dead address, so every worker also shows the connect failover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import cbor2
import psycopg
import pytest

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.delivery import Outbox
from gateway.broker import free_port
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.hub.shard import shard_of
from moteseal.keys.keyfile import generate_keypair, write_key_file
from moteseal.keys.provision import device_session, provision_device
from moteseal.keys.registry_pg import PgRegistry
from moteseal.links.mqtt_link import MqttLink
from moteseal.sim.simulate import Fleet, SimulatedSensor
from tests.cli_fleet import CLI
from tests.gateway_proc import stop_process
from tests.polling import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
DEVICES = [f"sh-{i:02d}" for i in range(30)]
READINGS = 50
SHARDS = 64
LEASE, RENEW = 3.0, 0.5
WORKERS = ["w1", "w2", "w3"]




def _owners(dsn: str) -> dict[int, str]:
    """Live leases: shard -> owner ({} until the first worker made the table)."""
    with psycopg.connect(dsn) as c:
        if c.execute("SELECT to_regclass('shard_lease')").fetchone()[0] is None:
            return {}
        return {s: o for s, o in c.execute(
            "SELECT shard, owner FROM shard_lease WHERE owner IS NOT NULL "
            "AND expires_at > extract(epoch from clock_timestamp())")}


def test_a_killed_workers_shards_are_taken_over_and_every_reading_lands_once(
        tmp_path: Path, pg_dsn: str, mosquitto) -> None:
    broker = mosquitto(auth=False)
    kp = generate_keypair()
    write_key_file(tmp_path / "hub.key", kp)
    reg = PgRegistry(pg_dsn, create_for_peer=b"hub")
    reg.add_peer_key(kp.pub, tmp_path / "hub.key")
    bundles = [provision_device(reg, d.encode(), SUITE, {})[1] for d in DEVICES]
    reg.close()
    dead = free_port()
    (tmp_path / "hub.toml").write_text(
        "[mqtt]\n"
        f'brokers = ["127.0.0.1:{dead}", "127.0.0.1:{broker.port}"]\n'
        "[registry]\n"
        'url = ""  # from $MOTESEAL_REGISTRY_URL\n'
        "[shards]\n"
        f"count = {SHARDS}\nlease_seconds = {LEASE}\nrenew_seconds = {RENEW}\n"
        "[dashboard]\nenabled = false\n")
    env = dict(os.environ, MOTESEAL_REGISTRY_URL=pg_dsn, MOTESEAL_CONFIG=str(tmp_path / "none.toml"))
    procs: dict[str, subprocess.Popen] = {}
    for w in WORKERS:
        with open(tmp_path / f"{w}.out", "w") as f:
            procs[w] = subprocess.Popen(CLI + ["hub", "worker", "--config", str(tmp_path / "hub.toml"),
                                               "--name", w, "--json"],
                                        stdout=f, stderr=subprocess.STDOUT, env=env)
    links: list[MqttLink] = []
    stop = threading.Event()
    try:
        assert all(pg_dsn not in " ".join(p.args) for p in procs.values())
        # Every shard leased, spread over the three workers.
        owners = wait_until(lambda: any(p.poll() is not None for p in procs.values()) or (
            (o := _owners(pg_dsn)) and len(o) == SHARDS and set(o.values()) == set(WORKERS) and o), 60)
        assert isinstance(owners, dict), {w: (tmp_path / f"{w}.out").read_text()[-2000:] for w in WORKERS}
        assert owners, {w: (tmp_path / f"{w}.out").read_text()[-2000:] for w in WORKERS}
        on_w2 = [d for d in DEVICES if owners[shard_of(d, SHARDS)] == "w2"]
        assert on_w2, "w2 holds no device of this fleet: the kill would prove nothing"

        backend = NaclBackend()
        fleet = Fleet()
        for i, b in enumerate(bundles):
            session = device_session(backend, b, Msg1Counter(NonpersistingCounterStore()))
            sensor = SimulatedSensor(session, None, 0.2, outbox=Outbox(200), limit=READINGS,  # type: ignore[arg-type]
                                     resend_after=1.0, handshake_timeout=2.0, min_handshake_gap=0.5)
            link = MqttLink(b.device_id.decode(), "127.0.0.1", broker.port, on_envelope=fleet.deliver(sensor))
            sensor.link = link
            links.append(link.start())
            fleet.add(sensor, stagger=0.2 * i / len(bundles))
        runner = threading.Thread(target=fleet.run, args=(stop,), kwargs={"until_done": True})
        runner.start()

        time.sleep(3.0)  # mid-run: about 15 of 50 readings each
        killed_at = time.monotonic()
        procs["w2"].send_signal(signal.SIGKILL)
        procs["w2"].wait(10)
        taken = wait_until(lambda: (o := _owners(pg_dsn)) and len(o) == SHARDS
                           and set(o.values()) == {"w1", "w3"}, 30, step=0.05)
        takeover = time.monotonic() - killed_at
        assert taken, _owners(pg_dsn)
        # shard Rule 2: at most lease + renew, plus polling and a loaded machine's slack
        assert takeover < LEASE + RENEW + 10, takeover

        runner.join(150)
        assert not runner.is_alive(), fleet.totals()
    finally:
        stop.set()
        for link in links:
            link.close()
        for p in procs.values():
            stop_process(p, 15)
    totals = fleet.totals()
    assert totals["evicted"] == 0 and totals["unacknowledged"] == 0, totals
    assert not fleet.errors, fleet.errors
    with psycopg.connect(pg_dsn) as c:
        rows = c.execute("SELECT device, body, worker FROM readings ORDER BY id").fetchall()
    seqs: dict[str, list[int]] = {}
    writers: dict[str, set[str]] = {}
    for device, body, worker in rows:
        seqs.setdefault(device, []).append(cbor2.loads(body)["seq"])
        writers.setdefault(device, set()).add(worker)
    for d in DEVICES:
        assert sorted(seqs.get(d, [])) == list(range(READINGS)), (d, sorted(seqs.get(d, [])))
    # The killed worker's devices were served by it, then by the others.
    for d in on_w2:
        assert "w2" in writers[d] and writers[d] - {"w2"}, (d, writers[d])
    # The workers reported the handover; the takeover time goes to the log.
    events = [json.loads(line) for w in ("w1", "w3")
              for line in (tmp_path / f"{w}.out").read_text().splitlines() if line.startswith("{")]
    gained = {s for e in events if e.get("event") == "shards" for s in e["gained"]}
    assert {s for s, o in owners.items() if o == "w2"} <= gained
    print(f"takeover after SIGKILL: {takeover:.2f} s (lease {LEASE} s, renew {RENEW} s); "
          f"resent {totals['resent']}, rehandshakes {totals['rehandshakes']}")

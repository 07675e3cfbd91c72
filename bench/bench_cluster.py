"""Gateway on a three-node NATS cluster against the gateway on one Mosquitto.

Default mode: envelopes per gateway CPU-second. Each round floods ``--count``
64-byte envelopes from one device account through ``moteseal gateway run``
to a hub account, once on Mosquitto (MQTT 5) and once on the NATS cluster
(MQTT 3.1.1, device on node 1, gateway on node 2, hub on node 3), in
interleaved rounds (bench/abab.py, order reversed every other round). The
gateway's CPU seconds come from /proc/<pid>/stat, so the other processes
sharing the machine do not count. Printed: each path's median and spread,
and the ratio cluster / Mosquitto per round.

``--overlap``: no moteseal code at all. Two persistent QoS 1 subscribers of
``moteseal/v1/up/+`` on different nodes, six publishers, ``--count`` messages
each round; prints what each subscriber got. On nats-server 2.9.10 with
replicated consumers some rounds lose messages for one subscriber
(docs/scaling.md, "Known losses").

    python3 bench/bench_cluster.py [--rounds 5] [--count 3000] [--replicas 3]
    python3 bench/bench_cluster.py --overlap [--rounds 5] [--replicas 3] [--file-consumers]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cbor2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from abab import fmt_ratio, fmt_rate, interleave, ratios  # noqa: E402
from gateway.broker import LocalBroker  # noqa: E402
from gateway.cluster import NatsCluster  # noqa: E402
from moteseal.links.mqtt_link import MqttLink  # noqa: E402

ACCOUNTS = {"gw": "gateway", "dev": "device", "hub": "device"}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def flood(dev: MqttLink, hub: MqttLink, gw_pid: int, count: int, tag: int) -> float:
    """Envelopes per gateway CPU-second for ``count`` envelopes dev -> hub."""
    while hub.recv(0.2) is not None:  # drain stragglers of an earlier round
        pass
    cpu0 = cpu_seconds(gw_pid)
    for i in range(count):
        dev.send(cbor2.dumps([6, b"dev", b"hub", 1, tag * 1_000_000 + i, b"\x5a" * 40]))
    got, deadline = 0, time.monotonic() + 120
    while got < count and time.monotonic() < deadline:
        env = hub.recv(1.0)
        if env is not None and cbor2.loads(env)[4] // 1_000_000 == tag:
            got += 1
    if got < count:
        raise RuntimeError(f"only {got} of {count} envelopes arrived")
    return count / max(cpu_seconds(gw_pid) - cpu0, 1 / TICK)


def throughput(args: argparse.Namespace, work: Path) -> None:
    from tests.cluster_fixtures import ClusterGateway
    from tests.conftest import GatewayProcess

    mosq = LocalBroker(work / "mosquitto")
    for name, role in ACCOUNTS.items():
        mosq.add(name, role)
    mosq.start()
    cluster = NatsCluster(work / "nats", ACCOUNTS, 3, "30s", args.replicas).start(45)
    gws: list = []
    links: list[MqttLink] = []
    try:
        gw_m = GatewayProcess(mosq, work / "gw-mosq", rate=0.0, burst=1.0)
        gw_m.start()
        gws.append(gw_m)
        gw_n = ClusterGateway(cluster, work / "gw-nats", "gwn", "gw", first=1, rate=0.0)
        gw_n.start()
        gws.append(gw_n)
        hosts = [(h, int(p)) for h, p in (x.split(":") for x in cluster.mqtt_hosts)]

        def nlink(user: str, node: int) -> MqttLink:
            return MqttLink(user, username=user, password=cluster.passwords[user],
                            hosts=hosts[node:] + hosts[:node], protocol=4,
                            inbox_size=args.count + 100).start(20)

        def mlink(user: str) -> MqttLink:
            return MqttLink(user, "127.0.0.1", mosq.port, username=user,
                            password=mosq.passwords[user], inbox_size=args.count + 100).start(20)

        md, mh, nd, nh = mlink("dev"), mlink("hub"), nlink("dev", 0), nlink("hub", 2)
        links += [md, mh, nd, nh]
        tags = iter(range(1, 10_000))
        cases = {
            "mosquitto": lambda: flood(md, mh, gw_m.proc.pid, args.count, next(tags)),
            "nats x3": lambda: flood(nd, nh, gw_n.proc.pid, args.count, next(tags)),
        }
        out = interleave(cases, rounds=args.rounds)
        print(f"gateway envelopes per gateway CPU-second, {args.count} per round, "
              f"NATS replicas {args.replicas}:")
        for name, values in out.items():
            print(f"  {name:10s} {fmt_rate(values)}")
        print(f"  nats/mosquitto {fmt_ratio(ratios(out['nats x3'], out['mosquitto']))}")
    finally:
        for lk in links:
            lk.close()
        for gw in gws:
            gw.stop()
        cluster.stop()
        mosq.stop()


def overlap(args: argparse.Namespace, work: Path) -> None:
    devs = [f"s{i}" for i in range(6)]
    per = max(1, args.count // len(devs))
    print(f"two persistent QoS 1 subscribers, {per * len(devs)} messages per round, "
          f"replicas {args.replicas}, consumers {'on disk' if args.file_consumers else 'in memory'}:")
    for r in range(args.rounds):
        cluster = NatsCluster(work / f"overlap{r}", {"gw1": "gateway", "gw2": "gateway",
                                                      **{d: "device" for d in devs}},
                              3, "5s", args.replicas,
                              memory_consumers=not args.file_consumers).start(45)
        clients = []
        try:
            def client(user: str, node: int, got: list | None) -> mqtt.Client:
                ev = threading.Event()
                c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user,
                                clean_session=got is None, protocol=mqtt.MQTTv311)
                c.username_pw_set(user, cluster.passwords[user])
                c.on_connect = lambda *a: ev.set()
                if got is not None:
                    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
                host, port = cluster.mqtt_hosts[node].split(":")
                c.connect(host, int(port))
                c.loop_start()
                ev.wait(15)
                clients.append(c)
                return c

            got1: list[bytes] = []
            got2: list[bytes] = []
            client("gw1", 0, got1).subscribe("moteseal/v1/up/+", 1)
            client("gw2", 1, got2).subscribe("moteseal/v1/up/+", 1)
            time.sleep(0.5)
            pubs = [client(d, 2, None) for d in devs]
            for n in range(per):
                infos = [p.publish(f"moteseal/v1/up/{d}", f"{d}-{n}".encode(), qos=1)
                         for d, p in zip(devs, pubs)]
                for info in infos:
                    info.wait_for_publish(10)
            want = per * len(devs)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (len(set(got1)) < want or len(set(got2)) < want):
                time.sleep(0.2)
            print(f"  round {r + 1}: subscriber 1 got {len(set(got1))}/{want}, "
                  f"subscriber 2 got {len(set(got2))}/{want}")
        finally:
            for c in clients:
                c.disconnect()
                c.loop_stop()
            cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--file-consumers", action="store_true",
                    help="--overlap: replicated consumers on disk (NATS's default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        (overlap if args.overlap else throughput)(args, Path(tmp))


if __name__ == "__main__":
    main()

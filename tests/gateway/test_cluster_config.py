"""``moteseal broker cluster-config``: a NATS cluster's files from the
Mosquitto ACL file and the accounts' password files, valid for nats-server,
private (0600), with each role's rights and nothing else."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

from click.testing import CliRunner

from gateway.broker_cli import broker_group
from gateway.cluster import find_nats_server

NODES = ["10.0.0.1:4222:6222:1883:8222", "10.0.0.2:4222:6222:1883:8222",
         "10.0.0.3:4222:6222:1883:8222"]


def _accounts(tmp_path):
    runner = CliRunner()
    (tmp_path / "pw").mkdir()
    for name, role in (("s1", "device"), ("gw", "gateway"), ("mon", "monitor")):
        r = runner.invoke(broker_group, ["add-device", name, "--role", role, "--dir", str(tmp_path),
                                         "--no-reload", "--password-file",
                                         str(tmp_path / "pw" / f"{name}.password")])
        assert r.exit_code == 0, r.output
    return runner


def test_cluster_config_writes_valid_private_files_with_each_roles_rights(tmp_path):
    runner = _accounts(tmp_path)
    out = tmp_path / "nats"
    args = ["cluster-config", "--acl-file", str(tmp_path / "acl"), "--password-dir",
            str(tmp_path / "pw"), "--out", str(out)]
    for node in NODES:
        args += ["--node", node]
    r = runner.invoke(broker_group, args)
    assert r.exit_code == 0, r.output
    password = (tmp_path / "pw" / "s1.password").read_text().strip()
    assert password not in r.output
    for name in ("accounts.conf", "node1.conf", "node2.conf", "node3.conf"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
        check = subprocess.run([find_nats_server(), "-c", str(out / name.replace(
            "accounts", "node1")), "-t"], capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stderr
    node2 = (out / "node2.conf").read_text()
    assert "listen: 10.0.0.2:1883" in node2 and "stream_replicas: 3" in node2
    assert node2.count("nats-route://") == 3
    users = json.loads(re.sub(r"^authorization ", "", (out / "accounts.conf").read_text()))["users"]
    perms = {u["user"]: u["permissions"] for u in users}
    assert perms["s1"] == {"publish": {"allow": ["moteseal.v1.up.s1"]},
                           "subscribe": {"allow": ["moteseal.v1.down.s1", "$MQTT.sub.>"]}}
    assert perms["gw"] == {"publish": {"allow": ["moteseal.v1.down.*", "moteseal.v1.gw.*"]},
                           "subscribe": {"allow": ["moteseal.v1.up.*", "moteseal.v1.gw.*",
                                                   "$MQTT.sub.>"]}}
    assert perms["mon"]["publish"] == {"deny": [">"]}


def test_cluster_config_names_a_missing_password_file(tmp_path):
    runner = _accounts(tmp_path)
    (tmp_path / "pw" / "gw.password").unlink()
    r = runner.invoke(broker_group, ["cluster-config", "--acl-file", str(tmp_path / "acl"),
                                     "--password-dir", str(tmp_path / "pw"), "--out",
                                     str(tmp_path / "nats"), "--node", NODES[0]])
    assert r.exit_code == 1
    assert "gw.password" in r.output and "Traceback" not in r.output


def test_shard_of_is_the_documented_sha256_prefix():
    # sha256("sensor-01") begins ab7788d22eb7372f; sha256("s0") begins ec18eac8d758b1eb.
    from gateway.shard import shard_of

    assert [shard_of("sensor-01", n) for n in (2, 3, 7)] == [0xab7788d22eb7372f % n for n in (2, 3, 7)]
    assert [shard_of("s0", n) for n in (1, 2, 3, 7)] == [0, 1, 2, 0]


def test_cluster_nodes_die_with_the_process_that_started_them(tmp_path):
    """A test process killed without its teardown leaves no broker behind:
    each node has PR_SET_PDEATHSIG = SIGKILL."""
    import os
    import sys
    import time

    script = ("import os, sys; from pathlib import Path; from gateway.cluster import NatsCluster;"
              "c = NatsCluster(Path(sys.argv[1]), {'gw': 'gateway'}, nodes=3).start(45);"
              "print(' '.join(str(p.pid) for p in c.procs), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], capture_output=True,
                         text=True, timeout=90, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 3, out.stderr
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().split(") ")[1][0] != "Z"]
        time.sleep(0.1)
    assert alive == []


def test_a_node_port_taken_before_the_node_binds_it_is_retried_on_fresh_ports(tmp_path, monkeypatch):
    """free_port() can hand out a port another process takes before the node
    binds it (CI saw a cluster node die on "address already in use"): the
    cluster starts again on fresh ports instead of failing the test."""
    import socket

    import gateway.cluster as cluster_mod

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    real, calls = cluster_mod.free_port, []

    def first_port_taken() -> int:
        calls.append(1)
        return taken if len(calls) == 2 else real()  # node 1's cluster (route) port

    monkeypatch.setattr(cluster_mod, "free_port", first_port_taken)
    c = cluster_mod.NatsCluster(tmp_path / "c", {"gw": "gateway"}, nodes=3)
    try:
        c.start(45)
        assert taken not in {p for n in c.ports for p in (n.client, n.cluster, n.mqtt, n.http)}
        assert all(p is not None and p.poll() is None for p in c.procs)
        assert "address already in use" in (tmp_path / "c" / "node1.attempt1.log").read_text()
    finally:
        c.stop()
        held.close()

"""Operating the gateway process: a drop names the destination it could not
route (so a route named "hub" for a peer called "hub1" shows at once), and
SIGHUP reloads [routes] and [policy] without a restart; a config that does
not load keeps the old routes."""

from __future__ import annotations

import json
import re
import signal

import cbor2
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.mosquitto


def data(src: str, dst: str, nonce: int) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 1, nonce, b"\x5a" * 40])


def _log_events(gw, name: str) -> list[dict]:
    out = []
    for line in gw.log_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == name:
            out.append(doc)
    return out


def test_a_drop_names_its_destination_and_sighup_reloads_the_routes(mosquitto, mqtt_client,
                                                                      gateway_process):
    broker = mosquitto(accounts={"gw": "gateway", "hub1": "device", "sensor-1": "device"})
    # The docs' old mistake: the route says "hub", the peer is "hub1".
    gw = gateway_process(broker, routes={"mqtt": ["hub", "sensor-*"]}, peers=["hub", "hub1"])
    peer = mqtt_client(broker, "hub1")
    peer.subscribe("moteseal/v1/down/hub1")
    s1 = mqtt_client(broker, "sensor-1")
    s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub1", 1))
    drops = wait_until(lambda: [d for d in _log_events(gw, "drop") if d["reason"] == "unknown_destination"],
                       15, step=0.1)
    assert drops and drops[0]["dst"] == "hub1" and drops[0]["arrived_from"] == "sensor-1", drops
    assert peer.quiet(0.5) == []

    # A broken config on SIGHUP: logged, the old routes stay.
    good = gw.config.read_text()
    gw.config.write_text(good.replace("[routes]", "[routes\n"))
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: _log_events(gw, "routes_reload_failed"), 15, step=0.1)
    assert gw.proc.poll() is None

    # The fixed config: routed from now on, without a restart.
    gw.config.write_text(re.sub(r'mqtt = \[.*\]', 'mqtt = ["hub1", "sensor-*"]', good))
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: _log_events(gw, "routes_reloaded"), 15, step=0.1)
    env = data("sensor-1", "hub1", 2)
    s1.publish("moteseal/v1/up/sensor-1", env)
    assert peer.collect(1) == [("moteseal/v1/down/hub1", env)]
    assert gw.proc.poll() is None


def test_a_gateway_that_cannot_reach_its_broker_says_so_at_once_and_keeps_trying(
        mosquitto, gateway_process):
    broker = mosquitto(accounts={"gw": "gateway"})
    gw = gateway_process(broker, start=False)
    broker.stop()  # nothing listens on the configured port any more
    import subprocess
    import sys
    with open(gw.workdir / "stdout.log", "ab") as out:
        gw.proc = subprocess.Popen([sys.executable, "-m", "moteseal.cli.main", "gateway", "run",
                                    "--config", str(gw.config)], stdout=out, stderr=subprocess.STDOUT)
    fails = wait_until(lambda: _log_events(gw, "mqtt_connect_failed"), 10, step=0.1)
    assert fails and fails[0]["port"] == broker.port and "refused" in fails[0]["reason"].lower(), fails
    assert wait_until(lambda: len(_log_events(gw, "mqtt_connect_failed")) >= 2, 10, step=0.1)  # still trying
    assert gw.proc.poll() is None

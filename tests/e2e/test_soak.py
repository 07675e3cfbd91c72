"""The soak test in CI mode (issue 8): ``bench/soak.py`` for about a minute.

51 CPython sensors (50 on MQTT, one on a serial cable through socat) and one
real MicroPython device send QoS-1 telemetry through real Mosquitto
(persistence on) and a real ``moteseal gateway run`` process, while the
harness SIGKILLs and restarts the gateway, stops it gracefully while sensors
reboot, restarts Mosquitto, pulls and re-plugs the serial cable, reboots
sensors (a new session on the same counter file) and kills the peer (it
forgets every session; its reading store is reopened from the same file).
The MQTT sensors retain their readings until the peer's ``Inbox``
acknowledges them. Then every message is accounted for: each one the
broker acknowledged reached the peer's application exactly once, none
twice, none forged, none evicted from a sensor's outbox, message-1
counters only ever went up, and every reading of the MicroPython device
(across a reboot) arrived exactly once.

The long mode is ``python bench/soak.py --seconds 3600`` (see its docstring).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from soak import Soak  # noqa: E402

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython, pytest.mark.timeout(400)]


def _run(tmp_path: Path, **kw) -> dict:
    soak = Soak(tmp_path, **kw)
    try:
        soak.setup()
        soak.run()
        soak.drain()
        return soak.verdict()
    finally:
        soak.close()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed (make setup)")
def test_soak_every_acknowledged_message_arrives_exactly_once_through_faults(tmp_path):
    v = _run(tmp_path, devices=50, seconds=60, interval=0.5)  # every fault in Soak.FAULTS
    summary = {k: v[k] for k in ("sent", "acked", "delivered", "reported_failed", "faults",
                                 "serial_sent", "serial_unacknowledged_lost", "reboots")}
    print(summary)
    assert v["devices"] >= 52  # 50 MQTT + serial + MicroPython
    for fault in ("gateway_kill", "broker_restart", "serial_cut", "gateway_restart", "peer_kill"):
        assert v["faults"].get(fault, 0) >= 1, v["faults"]
    assert v["reboots"] >= 5
    assert v["acked"] > 1000 and v["serial_sent"] > 0
    assert v["lost"] == [] and v["lost_count"] == 0
    assert v["duplicates"] == [] and v["forged"] == []
    assert v["counter_regressions"] == {}
    assert v["evicted"] == 0 and v["unacknowledged_at_end"] == 0
    # The peer's restart cost it sessions: devices re-handshook and resent,
    # and its Inbox dropped what it had already stored.
    assert v["peer_events"].get("duplicate", 0) > 0, v["peer_events"]
    assert v["stored"] > 1000
    assert v["serial_recovered_after_last_cut"]
    assert v["silent_after_reboot"] == []  # every rebooted sensor handshook again and was heard
    assert [m["ok"] for m in v["micropython"]] == [True, True], v["micropython"]
    # The MicroPython device's reboot: a fresh handshake with a higher counter.
    assert len(v["micropython_counters"]) >= 2
    assert v["micropython_counters"] == sorted(set(v["micropython_counters"]))
    assert v["ok"]


def test_soak_a_mosquitto_restart_while_the_gateway_is_down_loses_nothing(tmp_path):
    # Devices publish for 4 s into a broker that restarted while the gateway
    # was stopped: the gateway's persistent session (a plain subscription;
    # Mosquitto 2.0 does not restore $share ones, docs/gateway.md) holds them.
    v = _run(tmp_path, devices=10, seconds=12, interval=0.5, serial=False,
             faults=("broker_restart_gateway_down",), drain_timeout=30)
    assert v["faults"] == {"broker_restart_gateway_down": 1}
    assert v["duplicates"] == [] and v["forged"] == [] and v["counter_regressions"] == {}
    assert v["lost_count"] == 0, f"{v['lost_count']} acknowledged messages lost: {v['lost'][:5]}"
    assert all(m["ok"] for m in v["micropython"]), v["micropython"]

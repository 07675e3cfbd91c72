"""Wi-Fi at boot (micropython_port/main.py ``network_up``) on the real
MicroPython unix port, with ``network.WLAN`` replaced by a simulated one
behind the same interface (the radio itself is untested here): a network
that is not up in time is reported and tried again with backoff, never a
crash with OSError(110)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.mp_helpers import mp_binary, mp_env

pytestmark = pytest.mark.micropython

FAKE_NETWORK = '''
STA_IF = 0
state = {"connects": 0, "disconnects": 0, "up_after": %d, "polls": 0}

class WLAN:
    def __init__(self, iface):
        pass
    def active(self, on):
        pass
    def connect(self, ssid, password):
        state["connects"] += 1
        state["ssid"] = ssid
    def disconnect(self):
        state["disconnects"] += 1
    def isconnected(self):
        state["polls"] += 1
        return state["connects"] >= state["up_after"]
'''

SCRIPT = '''
import json
import network
from micropython_port import main as M
events = []
ok = M.network_up(%r, timeout_ms=300, report=lambda n, d: events.append([n, d]), backoff_max_ms=400)
print(json.dumps([ok, events, network.state["connects"], network.state["disconnects"], network.state["ssid"]]))
'''


def _run(tmp_path: Path, up_after: int) -> list:
    import subprocess
    (tmp_path / "network.py").write_text(FAKE_NETWORK % up_after)
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "farm", "password": "x"}))
    script = tmp_path / "wifi_test.py"
    script.write_text(SCRIPT % str(wifi))
    env = mp_env([tmp_path])
    p = subprocess.run([mp_binary(), str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_network_that_comes_up_late_is_retried_with_backoff_not_a_crash(tmp_path: Path) -> None:
    ok, events, connects, disconnects, ssid = _run(tmp_path, up_after=3)
    assert ok is True and ssid == "farm"
    assert events == [["wifi_down", 1], ["wifi_down", 2], ["wifi_up", 3]]
    assert connects == 3 and disconnects == 2


def test_a_network_already_up_is_used_at_once(tmp_path: Path) -> None:
    ok, events, connects, _, _ = _run(tmp_path, up_after=1)
    assert ok is True and events == [["wifi_up", 1]] and connects == 1

"""The hub end to end, as a user runs it: `moteseal hub init`, `moteseal hub
run` against a real Mosquitto and gateway, simulated sensors, then the
store (`moteseal readings`, also `--follow`), the JSON-lines sink, Home
Assistant discovery on a second real Mosquitto, a command sent down with
`moteseal send`, the metrics, the dashboard's API, and a second hub for the
same registry refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.broker import free_port
from tests.cli_fleet import CLI, make_fleet, run
from tests.polling import wait_until

from tests.conftest import MqttTestClient

pytestmark = pytest.mark.mosquitto

SENSORS = ["h-1", "h-2"]




@pytest.fixture
def world(tmp_path: Path, mosquitto, gateway_process):
    broker = mosquitto(accounts={"gw": "gateway", "hub1": "device"})
    ha_broker = mosquitto(auth=False)
    env, reg = make_fleet(tmp_path, broker, SENSORS, peer="hub1")
    gateway_process(broker, peers=["hub1"])
    r = run("hub", "init", "--registry", reg, "--out", str(tmp_path / "hub.toml"), env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dashboard.token").stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "hub.toml").read_text()
    assert 'bind = "127.0.0.1"' in text and "enabled = true" in text  # store and dashboard on
    cfg = text.replace("port = 1883", f"port = {broker.port}", 1)
    cfg = cfg.replace("port = 8080", "port = 0")
    cfg = cfg.replace('[jsonl]\nenabled = false\npath = "-"', '[jsonl]\nenabled = true\npath = "readings.jsonl"')
    cfg = cfg.replace("[home_assistant]               # MQTT discovery on the broker Home Assistant uses\n"
                      "enabled = false\nhost = \"127.0.0.1\"\nport = 1883",
                      "[home_assistant]\nenabled = true\nhost = \"127.0.0.1\"\n"
                      f"port = {ha_broker.port}")
    metrics_port = free_port()
    cfg = cfg.replace("[metrics]\nport = 0", f"[metrics]\nport = {metrics_port}")
    (tmp_path / "hub.toml").write_text(cfg)
    return {"tmp": tmp_path, "env": env, "broker": broker, "ha": ha_broker, "metrics": metrics_port}



def _start_hub(w, name: str = "hub") -> tuple[subprocess.Popen, Path]:
    err = w["tmp"] / f"{name}.err"
    proc = subprocess.Popen(CLI + ["hub", "run", "--config", str(w["tmp"] / "hub.toml"), "--json"],
                            stdout=open(w["tmp"] / f"{name}.out", "w"), stderr=open(err, "w"),
                            env=w["env"], cwd=w["tmp"])
    return proc, err


def test_the_hub_stores_feeds_sinks_sends_commands_and_serves_its_dashboard(world) -> None:
    w = world
    ha = MqttTestClient(w["ha"])
    ha.subscribe("homeassistant/#")
    ha.subscribe("moteseal/+/state")
    ha.subscribe("moteseal/+/availability")
    hub, err = _start_hub(w)
    sim = None
    try:
        url = wait_until(lambda: (m := re.search(r"dashboard at (http://\S+)", err.read_text()))
                         and m.group(1), 30, step=0.2)
        assert url, err.read_text()
        # A second hub for the same registry refuses instead of splitting traffic.
        second = run("hub", "run", "--config", str(w["tmp"] / "hub.toml"), env=w["env"], cwd=w["tmp"])
        assert second.returncode == 2 and "another hub" in second.stderr, second.stderr
        sim = subprocess.Popen(CLI + ["device", "simulate", "--bundle-dir", str(w["tmp"] / "bundles"),
                                      "--interval", "0.3", "--seconds", "60", "--json",
                                      "--state-dir", str(w["tmp"] / "state")],
                               stdout=open(w["tmp"] / "sim.out", "w"), stderr=subprocess.STDOUT, env=w["env"])
        rows = wait_until(lambda: _readings(w, "--device", "h-1", "--field", "t"), 40, step=0.2)
        assert rows and all(isinstance(r["value"], float) for r in rows), rows
        # --follow shows readings stored after it started, without a restart.
        follow = subprocess.Popen(CLI + ["readings", "--config", str(w["tmp"] / "hub.toml"), "--follow",
                                         "--json", "--since", "1s", "--field", "seq"],
                                  stdout=subprocess.PIPE, text=True, env=w["env"])
        try:
            first = json.loads(follow.stdout.readline())
            later = json.loads(follow.stdout.readline())
            assert later["ts"] >= first["ts"] and first["field"] == "seq"
        finally:
            follow.terminate()
            follow.wait(10)
        # A command, delivered end to end to a listening device.
        sent = run("send", "h-2", "interval=1", "--config", str(w["tmp"] / "hub.toml"), "--wait", "30",
                   "--json", env=w["env"])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        state = json.loads(sent.stdout)
        assert state["state"] == "acknowledged" and state["acked_at"] >= state["sent_at"], state
        assert wait_until(lambda: any('"event": "from_peer"' in ln and '"device": "h-2"' in ln
                                      for ln in (w["tmp"] / "sim.out").read_text().splitlines()), 30, step=0.2)
        # The JSON-lines sink got readings with every field.
        lines = wait_until(lambda: [json.loads(x) for x in (w["tmp"] / "readings.jsonl").read_text().splitlines()
                                    if x.strip()] if (w["tmp"] / "readings.jsonl").exists() else [],
                           30, step=0.2)
        assert lines and {"seq", "t", "rh", "bat"} <= set(lines[0]["fields"]), lines[:2]
        # Home Assistant: the discovery and state messages it would read.
        got = _collect(ha, 10)
        config = {t: json.loads(p) for t, p in got.items() if t.endswith("/config")}
        t_cfg = config.get("homeassistant/sensor/moteseal_h-1/t/config")
        assert t_cfg is not None, sorted(got)
        assert t_cfg["unit_of_measurement"] == "°C" and t_cfg["device_class"] == "temperature"
        assert t_cfg["state_class"] == "measurement" and t_cfg["state_topic"] == "moteseal/h-1/state"
        assert t_cfg["device"]["identifiers"] == ["moteseal_h-1"]
        assert t_cfg["availability_topic"] == "moteseal/h-1/availability"
        assert "t" in json.loads(got["moteseal/h-1/state"]) and got["moteseal/h-1/availability"] == b"online"
        # Retained, as the discovery docs ask: a client arriving later (Home
        # Assistant after a restart) still gets the config and the last state.
        late = MqttTestClient(w["ha"])
        try:
            late.subscribe("homeassistant/sensor/moteseal_h-1/t/config")
            late.subscribe("moteseal/h-1/state")
            topics = {t for t, _ in late.collect(2, timeout=10)}
            assert topics == {"homeassistant/sensor/moteseal_h-1/t/config", "moteseal/h-1/state"}
        finally:
            late.close()
        # Metrics and the dashboard's API.
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{w['metrics']}/metrics", timeout=10).read().decode()
        assert re.search(r"^moteseal_hub_readings_total [1-9]", metrics, re.M), metrics
        assert 'moteseal_hub_sink_backlog{sink="jsonl"}' in metrics
        assert re.search(r"^moteseal_hub_ack_lag_seconds_count [1-9]", metrics, re.M), metrics
        fleet = json.loads(urllib.request.urlopen(url + "api/fleet", timeout=10).read())
        assert {d["device"] for d in fleet["devices"]} >= set(SENSORS)
        assert all(d["session_age"] is not None for d in fleet["devices"] if d["device"] in SENSORS)
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "uPlot" not in page and "/static/app.js" in page  # the fleet page needs no chart library
        assert urllib.request.urlopen(url + "static/uPlot.iife.min.js", timeout=10).status == 200
        # Nothing secret anywhere a user can see.
        secrets = [w["broker"].passwords[s] for s in SENSORS] + [w["broker"].passwords["hub1"]]
        seen = (w["tmp"] / "hub.out").read_text() + err.read_text() + metrics + json.dumps(fleet) + \
            (w["tmp"] / "readings.jsonl").read_text()
        assert not any(s in seen for s in secrets)
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        hub.terminate()
        assert hub.wait(15) == 0, err.read_text()
        ha.close()


def test_a_dashboard_beyond_loopback_refuses_requests_without_the_token(world) -> None:
    w = world
    cfg = (w["tmp"] / "hub.toml").read_text().replace('bind = "127.0.0.1"             # anything else',
                                                        'bind = "0.0.0.0"             # anything else')
    cfg = cfg.replace("[home_assistant]\nenabled = true", "[home_assistant]\nenabled = false")
    (w["tmp"] / "hub.toml").write_text(cfg)
    hub, err = _start_hub(w)
    try:
        url = wait_until(lambda: (m := re.search(r"dashboard at http://[^:]+:(\d+)/", err.read_text()))
                         and m.group(1), 30, step=0.2)
        assert url, err.read_text()
        assert "needs the token" in err.read_text()
        base = f"http://127.0.0.1:{url}/"
        for path in ("", "api/fleet", "events", "metrics"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 401
        token = (w["tmp"] / "dashboard.token").read_text().strip()
        req = urllib.request.Request(base + "api/fleet", headers={"Authorization": f"Bearer {token}"})
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["peer"] == "hub1"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "api/fleet?token=" + token[:-1] + "x", timeout=10)
    finally:
        hub.terminate()
        hub.wait(15)


def _readings(w, *args: str) -> list[dict]:
    r = run("readings", "--config", str(w["tmp"] / "hub.toml"), "--json", *args, env=w["env"])
    if r.returncode != 0:
        return []
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def _collect(client: MqttTestClient, seconds: float) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            topic, payload = client.messages.get(timeout=0.2)
        except Exception:
            continue
        got[topic] = payload
        if "moteseal/h-1/state" in got and "homeassistant/sensor/moteseal_h-1/t/config" in got:
            break
    return got

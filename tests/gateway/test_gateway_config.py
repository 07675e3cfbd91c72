"""gateway.toml: defaults, relative paths, and errors that name file and key;
JSON logs that refuse bytes and limit drop lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import gateway_group
from gateway.config import ConfigError, load_config
from gateway.logs import DropLog, JsonLog


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_full_config_is_read(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = load_config(write(tmp_path, """
[gateway]
name = "edge-1"
max_envelope_bytes = 512
status_file = "run/status.json"
[mqtt]
port = 8883
username = "edge-1"
password_file = "pw"
tls = true
ca_file = "ca.pem"
share_group = "fleet"
share_group_trusted = true
[rate_limit]
rate = 2
burst = 4
[routes]
mqtt = ["hub", "s-*"]
[metrics]
port = 9200
[[serial]]
name = "uart0"
devices = ["mote-1", "mote-2"]
port = "/dev/ttyUSB0"
"""))
    assert cfg.name == "edge-1" and cfg.max_envelope_bytes == 512
    assert cfg.status_file == str(tmp_path / "run/status.json")
    assert cfg.mqtt.password == "s3cret" and cfg.mqtt.tls and cfg.mqtt.ca_file == str(tmp_path / "ca.pem")
    assert cfg.mqtt.client_id == "moteseal-gateway-edge-1" and cfg.mqtt.share_group == "fleet"
    assert (cfg.rate, cfg.burst, cfg.metrics_port) == (2.0, 4.0, 9200)
    assert cfg.routes == {"mqtt": ["hub", "s-*"], "uart0": ["mote-1", "mote-2"]}
    assert cfg.serial[0]["port"] == "/dev/ttyUSB0"


def test_empty_config_has_safe_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.mqtt.host == "127.0.0.1" and cfg.max_envelope_bytes == 1200
    assert cfg.metrics_port == 0 and cfg.routes == {"mqtt": ["*"]}
    assert cfg.warnings == []


@pytest.mark.parametrize("value", ["paho", "lean"])
def test_the_removed_mqtt_client_key_is_ignored_with_a_logged_warning(tmp_path, value):
    """``[mqtt] client`` chose between two MQTT clients; there is one now. An
    old file still loads (the link's guarantees are the same), and the
    gateway says, at start, that the line is ignored and can go."""
    from gateway.runner import Gateway

    path = write(tmp_path, f'[mqtt]\nclient = "{value}"\nport = 1884\n')
    cfg = load_config(path)
    assert cfg.mqtt.port == 1884 and not hasattr(cfg.mqtt, "client")
    [warning] = cfg.warnings
    assert str(path) in warning and f"[mqtt] client = '{value}' is ignored" in warning
    stream = io.StringIO()
    gw = Gateway(cfg, JsonLog(stream))  # logs at construction; nothing connects before start()
    gw.stop()
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()
              if json.loads(text)["event"] == "config_deprecated"]
    assert line["level"] == "warning" and line["message"] == warning


@pytest.mark.parametrize("text,where", [
    ("[mqtt]\nport = 70000\n", "[mqtt] port"),
    ("[mqtt]\nport = \"1883\"\n", "[mqtt] port"),
    ("[mqtt]\nprot = 1883\n", "[mqtt] prot: unknown key"),
    ("[mqtt]\npassword_file = \"missing\"\n", "[mqtt] password_file"),
    ("[mqtt]\nshare_group = \"a/b\"\n", "[mqtt] share_group"),
    # A share group any device account could join: refused unless trusted (Hardening 5).
    ("[mqtt]\nshare_group = \"moteseal\"\n", "[mqtt] share_group: a shared subscription lets any device"),
    ("[gateway]\nmax_envelope_bytes = true\n", "[gateway] max_envelope_bytes"),
    ("[rate_limit]\nrate = -1\n", "[rate_limit] rate"),
    ("[routes]\nmqtt = \"hub\"\n", "[routes] mqtt"),
    ("[log]\nlevel = \"loud\"\n", "[log] level"),
    ("[gatway]\n", "[gatway]: unknown table"),
    ("[[serial]]\nname = \"mqtt\"\n", "[serial 0] name"),
    ("[mqtt]\nclient = \"gmqtt\"\n", "[mqtt] client: this key was removed"),
    ("[mqtt]\nclient = 1\n", "[mqtt] client"),
    ("[mqtt\n", "gateway.toml"),
])
def test_errors_name_the_file_and_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and where in str(e.value)


def test_cli_reports_config_errors_as_usage_errors(tmp_path):
    path = write(tmp_path, "[metrics]\nport = -3\n")
    result = CliRunner().invoke(gateway_group, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "[metrics] port" in result.output


def test_log_lines_are_json_and_refuse_bytes():
    out = io.StringIO()
    log = JsonLog(out, clock=lambda: 1.5)
    log.event("drop", reason="malformed", size=3)
    assert json.loads(out.getvalue()) == {"ts": 1.5, "level": "info", "component": "gateway",
                                          "event": "drop", "reason": "malformed", "size": 3}
    with pytest.raises(TypeError):
        log.event("oops", payload=b"\x00secret")


def test_drop_lines_are_limited_per_reason_and_suppressions_counted():
    out = io.StringIO()
    now = [0.0]
    drops = DropLog(JsonLog(out), per_second=3, clock=lambda: now[0])
    for _ in range(10):
        drops("rate_limited", "s1", "mqtt", 40)
    drops("malformed", "s2", "mqtt", 5)
    now[0] = 1.5
    drops("rate_limited", "s1", "mqtt", 40)
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [(r["event"], r["reason"]) for r in recs]
    assert events == [("drop", "rate_limited")] * 3 + [("drop", "malformed"),
                      ("drops_suppressed", "rate_limited"), ("drop", "rate_limited")]
    assert recs[4]["count"] == 7


def test_status_reports_a_stale_status_file_and_exits_1(tmp_path):
    import time as _time

    status = tmp_path / "status.json"
    doc = {"name": "gw1", "relayed": 5, "relayed_by_link": {"mqtt": 5},
           "dropped": {"malformed": 2, "oversize": 0}, "last_seen": {"s-1": _time.time() - 3},
           "links": {"mqtt": {"connected": True, "queue_depth": 0}},
           "uptime_s": 60, "status_interval": 2.0}
    status.write_text(json.dumps(dict(doc, updated=_time.time())))
    fresh = CliRunner().invoke(gateway_group, ["status", "--status-file", str(status)])
    assert fresh.exit_code == 0 and "malformed=2" in fresh.output and "s-1" in fresh.output
    status.write_text(json.dumps(dict(doc, updated=_time.time() - 60)))
    stale = CliRunner().invoke(gateway_group, ["status", "--status-file", str(status), "--json"])
    assert stale.exit_code == 1 and json.loads(stale.output)["stale"] is True

"""`moteseal gateway run` in the foreground: with a log file it still says
on stderr that it runs and where it logs; a metrics port in use is named."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


def _toml(tmp_path: Path, broker, metrics_port: int, log_file: str) -> Path:
    (tmp_path / "gw.mqtt").write_text(broker.passwords["gw"] + "\n")
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nname = "gw1"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                    f'username = "gw"\npassword_file = "gw.mqtt"\n[routes]\nmqtt = ["*"]\n'
                    f'[metrics]\nport = {metrics_port}\n[log]\nfile = "{log_file}"\n')
    return conf


def _gateway(conf: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "moteseal.cli.main", "gateway", "run", "--config",
                             str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_a_log_file_still_leaves_a_line_in_the_foreground(tmp_path, mosquitto) -> None:
    broker = mosquitto(accounts={"gw": "gateway"})
    conf = _toml(tmp_path, broker, 0, "gw1.jsonl")
    proc = _gateway(conf)
    try:
        line = proc.stderr.readline()  # bounded by the test timeout
        assert "gateway gw1 running" in line and str(tmp_path / "gw1.jsonl") in line, line
        deadline = time.monotonic() + 30
        while "gateway_started" not in (tmp_path / "gw1.jsonl").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "gateway_started" in (tmp_path / "gw1.jsonl").read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out + err


def test_a_metrics_port_in_use_is_named(tmp_path, mosquitto) -> None:
    broker = mosquitto(accounts={"gw": "gateway"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _gateway(_toml(tmp_path, broker, port, ""))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"metrics port 127.0.0.1:{port}" in err and "Traceback" not in out + err, err

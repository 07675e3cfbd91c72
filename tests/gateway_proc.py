"""Subprocesses the tests start: ``stop_process`` (SIGTERM, then SIGKILL
after a grace period), and ``moteseal gateway run`` as a real subprocess:
the start-and-wait, status, log, kill and stop shared by the gateways the
fixtures start (tests/conftest.py ``GatewayProcess`` on Mosquitto,
tests/cluster_fixtures.py ``ClusterGateway`` on NATS); each subclass writes
only its own config.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stop_process(proc: "subprocess.Popen | None", grace: float = 10.0) -> None:
    """Stops ``proc`` if it still runs (None or an exited one: nothing):
    SIGTERM, and SIGKILL if it has not exited within ``grace`` seconds;
    reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class GatewaySubprocess:
    """A gateway subprocess on ``<workdir>/gateway.toml`` (the subclass writes
    it; the password for ``password_file = "gw.password"`` is written here).
    ``start`` returns once the status file says MQTT is connected. Not
    thread-safe."""

    start_timeout = 15.0

    def __init__(self, workdir: Path, password: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.status_file = workdir / "status.json"
        self.log_file = workdir / "gateway.log"
        self.config = workdir / "gateway.toml"
        (workdir / "gw.password").write_text(password)
        self.proc: "subprocess.Popen[bytes] | None" = None

    def start(self, timeout: float | None = None) -> "GatewaySubprocess":
        self.status_file.unlink(missing_ok=True)
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moteseal.cli.main", "gateway", "run", "--config",
                 str(self.config)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: "
                                   + (self.workdir / "stdout.log").read_text(errors="replace"))
            s = self.status()
            if s and s["links"]["mqtt"]["connected"]:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("gateway did not connect; log:\n" + self.log_text())

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final status, in-flight work lost."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

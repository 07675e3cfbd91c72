"""The end-to-end tests' hub world: one device's fleet served by the real
hub in this process (a real Mosquitto and ``moteseal gateway run`` in
between), with the transfer helpers the update tests share
(tests/e2e/test_transfer_mp.py, tests/qemu/test_qemu_transfer.py).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from tests.cli_fleet import make_fleet


def hub_fleet(tmp_path: Path, mosquitto: Any, gateway_process: Any,
              device: str) -> tuple[dict[str, str], Any, Path]:
    """A broker with a gateway and peer "hub1", one provisioned ``device``
    (tests/cli_fleet.py ``make_fleet``) and ``<tmp>/hub.toml`` for it (the
    template, the dashboard off). Returns the CLI's environment, the gateway
    process and the device's bundle path."""
    from moteseal.hub.config import TEMPLATE

    broker = mosquitto(accounts={"gw": "gateway", "hub1": "device"})
    env, reg = make_fleet(tmp_path, broker, [device], peer="hub1")
    gw = gateway_process(broker, peers=["hub1"])
    cfg = TEMPLATE.format(registry=reg, peer="hub1").replace("port = 1883", f"port = {broker.port}", 1)
    cfg = cfg.replace("[dashboard]\nenabled = true", "[dashboard]\nenabled = false")
    (tmp_path / "hub.toml").write_text(cfg)
    os.chmod(tmp_path / "hub1.mqtt", 0o600)
    return env, gw, tmp_path / "bundles" / f"{device}.bundle"


class HubThread:
    """The real ``Hub`` on ``config`` run on a daemon thread, its reports kept
    in ``reports``; ``close`` (idempotent) stops it. ``rate`` sets the
    transfer service's pieces per second. Start and close from one thread;
    ``reports`` is appended to by the hub's."""

    def __init__(self, config: Path, rate: int | None = None) -> None:
        from moteseal.hub.config import load
        from moteseal.hub.service import Hub

        self.reports: list[dict[str, Any]] = []
        self.hub = Hub(load(str(config)), on_report=self.reports.append).start()
        if rate is not None:
            self.hub.transfers.rate = rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.hub.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.thread.join(10)
            self.hub.close()


def telemetry(w: dict[str, Any], device: str, since: int = 0) -> bool:
    """Whether the hub reported a telemetry message from ``device`` since
    report ``since``."""
    return any(r["event"] == "telemetry" and r.get("device") == device for r in w["reports"][since:])


def transfer_state(w: dict[str, Any], row: int) -> dict[str, Any]:
    """The hub's view of transfer ``row`` ({} when it has none)."""
    return w["hub"].transfer(row) or {}


def cut_link(w: dict[str, Any], row: int) -> int:
    """A link cut: the gateway killed (in-flight pieces lost), back after
    1 s. Returns the offset the hub had when it went."""
    at = transfer_state(w, row)["offset"]
    w["gw"].kill()
    time.sleep(1.0)
    w["gw"].start()
    return at

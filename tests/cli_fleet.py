"""A peer and its sensors made the way a user makes them, through the CLI
as subprocesses: `moteseal keygen`, then `moteseal provision` per sensor with
its broker account. Shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "moteseal.cli.main"]


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    """One `moteseal` command; output captured, bounded in time."""
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, **kw)


def make_fleet(tmp_path: Path, broker: Any, sensors: list[str], peer: str = "hub") -> tuple[dict[str, str], str]:
    """Keygen for ``peer`` (registry ``<tmp>/<peer>.sqlite``), a broker account
    and a bundle (``<tmp>/bundles/<name>.bundle``) per sensor, and the peer's
    MQTT password in ``<tmp>/<peer>.mqtt``. The broker must already hold the
    peer's account. Returns the environment the CLI ran with (no user
    config) and the registry path."""
    env = dict(os.environ, MOTESEAL_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    reg = str(tmp_path / f"{peer}.sqlite")
    r = run("keygen", "--out", str(tmp_path / f"{peer}.key"), "--peer", peer, "--registry", reg, env=env)
    assert r.returncode == 0, r.stderr
    (tmp_path / "bundles").mkdir()
    for s in sensors:
        password = broker.add(s, "device")
        r = run("provision", s, "--registry", reg, "--out", str(tmp_path / "bundles" / f"{s}.bundle"),
                "--link", "mqtt", "--host", "127.0.0.1", "--port", str(broker.port),
                "--username", s, env=dict(env, MOTESEAL_LINK_PASSWORD=password))
        assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / f"{peer}.mqtt").write_text(broker.passwords[peer])
    return env, reg

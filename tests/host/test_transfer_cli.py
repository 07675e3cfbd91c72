"""`moteseal push` / `moteseal update` and their pieces on the host, without
a running hub: the application archive, the queue in the hub's store and
its bounds, `--group` from the hub's group file, and the CLI's errors.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from moteseal.hub.config import TEMPLATE
from moteseal.hub.push import QUEUED_MAX, TransferStore
from moteseal.hub.store import HubStore
from moteseal.hub.transfer import F_APP, TransferError, pack_app
from moteseal.peer.delivery import StoreError
from tests.cli_fleet import run


def _flash_dir(root: Path) -> Path:
    d = root / "flash"
    (d / "device").mkdir(parents=True)
    (d / "main.py").write_text("import micropython_port.main as m\nm.main()\n")
    (d / "device" / "noise.mpy").write_bytes(b"M\x06noise")
    for secret in ("moteseal.bundle", "wifi.json", "manifest.json"):
        (d / secret).write_bytes(b"secret")
    (d / "device" / "notes.txt").write_text("not shipped")
    return d


def test_the_archive_holds_the_mpy_files_and_main_py_never_the_bundle(tmp_path: Path) -> None:
    arc = pack_app(_flash_dir(tmp_path))
    members, i = {}, 0
    while i < len(arc):
        n = arc[i]
        name = arc[i + 1:i + 1 + n].decode()
        size = int.from_bytes(arc[i + 1 + n:i + 5 + n], "big")
        members[name] = arc[i + 5 + n:i + 5 + n + size]
        i += 5 + n + size
    assert sorted(members) == ["device/noise.mpy", "main.py"]
    assert b"secret" not in arc
    with pytest.raises(TransferError):
        pack_app(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferError):
        pack_app(tmp_path / "empty")


def test_the_queue_checks_names_and_bounds_per_device(tmp_path: Path) -> None:
    store = TransferStore(str(tmp_path / "s.sqlite"))
    try:
        with pytest.raises(TransferError):
            store.queue("d1", b"../x", b"data", 1)
        with pytest.raises(TransferError):
            store.queue("d1", b"big", bytes(1048577), 1)
        rows = [store.queue("d1", b"f", b"data", v) for v in range(1, QUEUED_MAX + 1)]
        with pytest.raises(StoreError):
            store.queue("d1", b"f", b"data", 99)
        other = store.queue("d2", b"f", b"data", 1)  # another device has its own bound
        got = store.get(rows[0])
        assert got is not None and (got["state"], got["size"], got["version"]) == ("queued", 4, 1)
        # One transfer per device starts at a time (the oldest).
        assert [r[0] for r in store.startable(set())] == [rows[0], other]
        assert [r[1] for r in store.startable({"d1"})] == ["d2"]
    finally:
        store.close()


def _hub(tmp_path: Path) -> Path:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(TEMPLATE.format(registry="reg.sqlite", peer="hub1"))
    HubStore(str(tmp_path / "readings.sqlite")).close()
    return cfg


def test_update_group_queues_one_transfer_per_member_of_the_hub_group(tmp_path: Path) -> None:
    cfg = _hub(tmp_path)
    flash = _flash_dir(tmp_path)
    r = run("update", "--group", "greenhouse", str(flash), "--config", str(cfg))
    assert r.returncode == 2 and "group" in r.stderr, r.stderr  # no group file yet
    db = sqlite3.connect(tmp_path / "readings.sqlite.groups")  # `moteseal group`'s file
    db.execute("CREATE TABLE groups (gid TEXT PRIMARY KEY, epoch INTEGER NOT NULL, "
               "members TEXT NOT NULL)")
    db.execute("INSERT INTO groups VALUES ('greenhouse', 3, ?)", (json.dumps(["s-1", "s-2"]),))
    db.commit()
    db.close()
    r = run("update", "--group", "greenhouse", str(flash), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    states = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(s["device"] for s in states) == ["s-1", "s-2"]
    assert all(s["state"] == "queued" and s["name"] == "app" and s["flags"] == F_APP
               for s in states)
    r = run("update", "--group", "nope", str(flash), "--config", str(cfg))
    assert r.returncode == 2 and "no group" in r.stderr
    r = run("update", str(flash), "--config", str(cfg))
    assert r.returncode == 2


def test_push_queues_a_file_and_refuses_a_bad_name(tmp_path: Path) -> None:
    cfg = _hub(tmp_path)
    f = tmp_path / "settings.json"
    f.write_text("{}")
    r = run("push", "s-1", str(f), "--config", str(cfg), "--version", "7", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["name"], got["version"], got["state"]) == ("settings.json", 7, "queued")
    r = run("push", "s-1", str(f), "--as", ".xstate", "--config", str(cfg))
    assert r.returncode == 2 and "name" in r.stderr
    r = run("push", "s-1", str(f), "--config", str(cfg), "--wait", "0.5")
    assert r.returncode == 1  # queued, but no hub runs to send it

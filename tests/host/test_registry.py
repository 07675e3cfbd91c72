"""The peer's SQLite registry: directory methods, revocation, rotation
bookkeeping, refusal counts, permissions and durability."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from moteseal.keys.keyfile import KeyFileError, KeyPermissionError, generate_keypair, write_key_file
from moteseal.keys.registry import Registry, RegistryError, RegistryRefusal, UNKNOWN_DEVICE, parse_id

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


@pytest.fixture
def peer(tmp_path: Path):
    """A registry for peer ``hub1`` with one static key on disk."""
    kp = generate_keypair()
    write_key_file(tmp_path / "hub1.key", kp)
    reg = Registry(tmp_path / "reg" / "hub1.sqlite", create_for_peer=b"hub1")
    reg.add_peer_key(kp.pub, tmp_path / "hub1.key")
    try:
        yield reg, kp
    finally:
        reg.close()


def test_new_registry_is_private(tmp_path: Path, peer) -> None:
    reg, _ = peer
    assert stat.S_IMODE(os.stat(reg.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(reg.path.parent).st_mode) == 0o700
    assert reg.peer_id == b"hub1"


def test_registry_readable_by_others_is_refused(peer) -> None:
    reg, _ = peer
    os.chmod(reg.path, 0o644)
    with pytest.raises(KeyPermissionError):
        Registry(reg.path)


def test_missing_registry_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="keygen --peer"):
        Registry(tmp_path / "nope.sqlite")


def test_a_file_that_is_not_a_registry_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.sqlite"
    p.write_bytes(b"this is not sqlite at all" * 100)
    os.chmod(p, 0o600)
    with pytest.raises(RegistryError, match="not a moteseal registry"):
        Registry(p)


def test_directory_methods_for_a_provisioned_device(peer) -> None:
    reg, kp = peer
    psk = os.urandom(32)
    rec = reg.provision(b"s1", psk, SUITE)
    assert rec.pins == [kp.pub] and rec.generation == 1 and rec.counter == -1
    assert reg.psk_for(b"s1") == psk
    assert reg.psk_for(b"nobody") is None
    assert reg.is_revoked(b"s1") is False
    assert reg.counter_get(b"s1") == -1
    reg.counter_set(b"s1", 41)
    assert reg.counter_get(b"s1") == 41
    reg.note_static_used(b"s1", kp.pub)
    assert reg.get(b"s1").last_key_state == "current"
    assert reg.statics() == [(kp.priv, kp.pub)]
    assert reg.counter_get(b"nobody") == -1


def test_counter_survives_reopening(peer) -> None:
    reg, _ = peer
    reg.provision(b"s1", os.urandom(32), SUITE)
    reg.counter_set(b"s1", 7)
    # A second connection (another process in production) sees it at once:
    # counter_set committed before returning.
    other = sqlite3.connect(reg.path)
    assert other.execute("SELECT counter FROM devices WHERE device_id = ?", (b"s1",)).fetchone() == (7,)
    other.close()
    reg.close()
    with Registry(reg.path) as again:
        assert again.counter_get(b"s1") == 7


def test_reprovisioning_replaces_the_psk_and_resets_the_counter(peer) -> None:
    reg, _ = peer
    old = os.urandom(32)
    reg.provision(b"s1", old, SUITE)
    reg.counter_set(b"s1", 100)
    reg.revoke(b"s1", "lost")
    with pytest.raises(RegistryError, match="--replace"):
        reg.provision(b"s1", os.urandom(32), SUITE)
    assert reg.psk_for(b"s1") == old
    new = os.urandom(32)
    rec = reg.provision(b"s1", new, SUITE, replace=True)
    assert reg.psk_for(b"s1") == new != old
    assert rec.generation == 2 and rec.counter == -1 and not rec.revoked


def test_revoke_is_seen_by_another_open_registry(peer) -> None:
    reg, _ = peer
    reg.provision(b"s1", os.urandom(32), SUITE)
    with Registry(reg.path) as responder_view:
        assert not responder_view.is_revoked(b"s1")
        rec = reg.revoke(b"s1", "stolen")
        assert rec.revoked and rec.revoke_reason == "stolen"
        assert responder_view.is_revoked(b"s1")
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.revoke(b"ghost")


def test_rotation_bookkeeping(tmp_path: Path, peer) -> None:
    reg, old = peer
    reg.provision(b"early", os.urandom(32), SUITE)
    new = generate_keypair()
    write_key_file(tmp_path / "hub1-2.key", new)
    reg.rotate_to(new.pub, tmp_path / "hub1-2.key")
    assert reg.statics() == [(new.priv, new.pub), (old.priv, old.pub)]  # newest first
    reg.provision(b"overlap", os.urandom(32), SUITE)
    assert reg.get(b"overlap").pins == [new.pub, old.pub]
    early = reg.get(b"early")
    assert early.pin_states() == ["previous"] and early.needs_reprovision and early.on_old_key
    ov = reg.get(b"overlap")
    assert not ov.on_old_key
    reg.note_static_used(b"overlap", old.pub)  # a device that handshook on the old key
    assert reg.get(b"overlap").on_old_key and not reg.get(b"overlap").needs_reprovision
    # A second rotation during the overlap is refused.
    with pytest.raises(RegistryRefusal, match="overlap"):
        reg.rotate_to(generate_keypair().pub, tmp_path / "x.key")
    # Retiring would lock "early" out: refused, then allowed after re-provisioning.
    with pytest.raises(RegistryRefusal, match="early"):
        reg.retire_previous()
    reg.provision(b"early", os.urandom(32), SUITE, replace=True)
    assert reg.retire_previous() == old.pub
    assert reg.statics() == [(new.priv, new.pub)]
    assert reg.get(b"overlap").pin_states() == ["current", "retired"]
    assert [k["state"] for k in reg.peer_keys()] == ["current", "retired"]
    with pytest.raises(RegistryError, match="no previous key"):
        reg.retire_previous()
    # A retired key never comes back.
    write_key_file(tmp_path / "again.key", old)
    with pytest.raises(RegistryRefusal):
        reg.rotate_to(old.pub, tmp_path / "again.key")


def test_retire_with_force_locks_out_stuck_devices(tmp_path: Path, peer) -> None:
    reg, _ = peer
    reg.provision(b"stuck", os.urandom(32), SUITE)
    new = generate_keypair()
    write_key_file(tmp_path / "n.key", new)
    reg.rotate_to(new.pub, tmp_path / "n.key")
    assert [d.device_id for d in reg.devices_needing_reprovision()] == [b"stuck"]
    reg.retire_previous(force=True)
    assert reg.get(b"stuck").pin_states() == ["retired"]


def test_second_first_key_is_refused(tmp_path: Path, peer) -> None:
    reg, _ = peer
    with pytest.raises(RegistryRefusal, match="rotate"):
        reg.add_peer_key(generate_keypair().pub, tmp_path / "other.key")


def test_key_file_replaced_behind_the_registrys_back_is_refused(tmp_path: Path, peer) -> None:
    reg, _ = peer
    write_key_file(tmp_path / "hub1.key", generate_keypair(), overwrite=True)
    with Registry(reg.path) as fresh:
        with pytest.raises(KeyFileError, match="different key"):
            fresh.statics()


def test_missing_or_too_open_peer_key_file(tmp_path: Path, peer) -> None:
    reg, _ = peer
    os.chmod(tmp_path / "hub1.key", 0o644)
    with Registry(reg.path) as fresh:
        with pytest.raises(KeyPermissionError):
            fresh.statics()
    os.unlink(tmp_path / "hub1.key")
    with Registry(reg.path) as fresh:
        with pytest.raises(KeyFileError, match="missing"):
            fresh.statics()


def test_encrypted_peer_keys_open_with_the_registry_passphrase(tmp_path: Path) -> None:
    kp = generate_keypair()
    write_key_file(tmp_path / "p.key", kp, b"pw", kdf="interactive")
    with Registry(tmp_path / "r.sqlite", create_for_peer=b"p") as reg:
        reg.add_peer_key(kp.pub, tmp_path / "p.key")
    with Registry(tmp_path / "r.sqlite", passphrase=b"pw") as reg:
        assert reg.statics() == [(kp.priv, kp.pub)]
    with Registry(tmp_path / "r.sqlite", passphrase=lambda path: b"pw" if path.endswith("p.key") else None) as reg:
        assert reg.statics()[0][1] == kp.pub


def test_refusals_are_counted_by_reason_and_logged(peer, caplog: pytest.LogCaptureFixture) -> None:
    reg, _ = peer
    reg.provision(b"s1", os.urandom(32), SUITE)
    caplog.set_level(logging.WARNING, logger="moteseal.registry")
    for _ in range(3):
        reg.count_refusal(b"s1", "replay")
    reg.count_refusal(b"s1", "revoked")
    reg.count_refusal(b"forged-1", "unknown-device")
    reg.count_refusal(b"forged-2", "unknown-device")
    counts = {(r["device_id"], r["reason"]): r["count"] for r in reg.refusals()}
    assert counts == {("s1", "replay"): 3, ("s1", "revoked"): 1, ("(unknown)", "unknown-device"): 2}
    assert [r["reason"] for r in reg.refusals(b"s1")] == ["replay", "revoked"]
    assert [r["count"] for r in reg.refusals(UNKNOWN_DEVICE)] == [2]
    msgs = [r.getMessage() for r in caplog.records]
    # Logged, but rate-limited: one line per device and reason in a burst.
    assert sum("s1: replay" in m for m in msgs) == 1
    assert any("forged-2: unknown-device" in m for m in msgs)
    # Counts reach the file (flushed on close) for the CLI to read.
    reg.count_refusal(b"s1", "replay")
    reg.close()
    with Registry(reg.path) as again:
        assert {r["reason"]: r["count"] for r in again.refusals(b"s1")}["replay"] == 4


def test_log_lines_escape_hostile_ids(peer, caplog: pytest.LogCaptureFixture) -> None:
    reg, _ = peer
    caplog.set_level(logging.WARNING, logger="moteseal.registry")
    reg.count_refusal(b"x\nFAKE LOG LINE\xff", "auth")
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", ["", "a" * 17, "has space", "sl/ash", "\u00e9t\u00e9"])
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(RegistryError):
        parse_id(bad)


def test_provisioning_needs_a_peer_key(tmp_path: Path) -> None:
    with Registry(tmp_path / "r.sqlite", create_for_peer=b"p") as reg:
        with pytest.raises(RegistryError, match="no static key"):
            reg.provision(b"s1", os.urandom(32), SUITE)


def test_a_bad_new_key_during_an_overlap_does_not_stop_the_old_one(
    tmp_path: Path, peer, caplog: pytest.LogCaptureFixture
) -> None:
    reg, old = peer
    new = generate_keypair()
    write_key_file(tmp_path / "new.key", new, b"other passphrase", kdf="interactive")
    reg.rotate_to(new.pub, tmp_path / "new.key")
    caplog.set_level(logging.ERROR, logger="moteseal.registry")
    with Registry(reg.path) as responder:  # no passphrase for the new key
        assert responder.statics() == [(old.priv, old.pub)]
        assert any("new.key" in r.getMessage() and "not served" in r.getMessage() for r in caplog.records)
        with pytest.raises(KeyFileError, match="encrypted"):
            responder.check_statics()
    with Registry(reg.path, passphrase=lambda p: b"other passphrase" if p.endswith("new.key") else None) as ok:
        assert ok.check_statics() == [(new.priv, new.pub), (old.priv, old.pub)]


def test_a_running_peers_refusals_reach_the_file_within_a_second(peer) -> None:
    reg, _ = peer
    reg.provision(b"s1", os.urandom(32), SUITE)

    def on_disk() -> int:
        c = sqlite3.connect(reg.path)
        try:
            row = c.execute("SELECT SUM(count) FROM refusals").fetchone()
        finally:
            c.close()
        return row[0] or 0

    reg.count_refusal(b"s1", "auth")  # first after a quiet period: written at once
    assert on_disk() == 1
    for _ in range(5):
        reg.count_refusal(b"s1", "auth")  # a burst: buffered ...
    assert on_disk() < 6
    deadline = time.monotonic() + 10
    while on_disk() < 6 and time.monotonic() < deadline:  # ... and flushed by the timer
        time.sleep(0.05)
    assert on_disk() == 6

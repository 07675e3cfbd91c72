"""The registry's contract, on both backends: the embedded SQLite file
(``Registry``) and PostgreSQL (``PgRegistry``, a real server from
tests/pg_fixtures.py). Each test runs once per backend; a second instance
opened on the same store plays a second process (the CLI, or another hub
worker)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from device.errors import StorageError
from moteseal.keys.keyfile import generate_keypair, write_key_file
from moteseal.keys.registry import Registry, RegistryError, RegistryRefusal, UNKNOWN_DEVICE

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """``(registry, keypair, open_again)`` for peer ``hub1`` with one key."""
    kp = generate_keypair()
    write_key_file(tmp_path / "hub1.key", kp)
    opened: list[Registry] = []
    if request.param == "sqlite":
        path = tmp_path / "reg" / "hub1.sqlite"

        def open_again(**kw: Any) -> Registry:
            opened.append(Registry(path, **kw))
            return opened[-1]
    else:
        from moteseal.keys.registry_pg import PgRegistry
        dsn = request.getfixturevalue("pg_dsn")

        def open_again(**kw: Any) -> Registry:
            opened.append(PgRegistry(dsn, **kw))
            return opened[-1]
    reg = open_again(create_for_peer=b"hub1")
    reg.add_peer_key(kp.pub, tmp_path / "hub1.key")
    try:
        yield reg, kp, open_again
    finally:
        for r in opened:
            r.close()


def test_directory_methods_for_a_provisioned_device(backend) -> None:
    reg, kp, _ = backend
    psk = os.urandom(32)
    rec = reg.provision(b"s1", psk, SUITE)
    assert rec.pins == [kp.pub] and rec.generation == 1 and rec.counter == -1
    assert reg.psk_for(b"s1") == psk and reg.psk_for(b"nobody") is None
    assert reg.is_revoked(b"s1") is False
    reg.counter_set(b"s1", 41)
    assert reg.counter_get(b"s1") == 41 and reg.counter_get(b"nobody") == -1
    reg.note_static_used(b"s1", kp.pub)
    assert reg.get(b"s1").last_key_state == "current"
    assert reg.statics() == [(kp.priv, kp.pub)]
    assert reg.device_epoch(b"s1") == 1 and reg.static_live(kp.pub)


def test_counter_and_psk_are_seen_by_another_instance(backend) -> None:
    reg, _, open_again = backend
    psk = os.urandom(32)
    reg.provision(b"s1", psk, SUITE)
    reg.counter_set(b"s1", 7)
    other = open_again()
    assert other.peer_id == b"hub1"
    assert other.counter_get(b"s1") == 7 and other.psk_for(b"s1") == psk


def test_reprovisioning_replaces_the_psk_and_resets_the_counter(backend) -> None:
    reg, _, _ = backend
    reg.provision(b"s1", os.urandom(32), SUITE)
    reg.counter_set(b"s1", 9)
    with pytest.raises(RegistryError, match="already provisioned"):
        reg.provision(b"s1", os.urandom(32), SUITE)
    new = os.urandom(32)
    rec = reg.provision(b"s1", new, SUITE, replace=True)
    assert rec.generation == 2 and rec.counter == -1 and reg.psk_for(b"s1") == new


def test_a_revocation_by_another_instance_changes_the_revision(backend) -> None:
    reg, _, open_again = backend
    reg.provision(b"s1", os.urandom(32), SUITE)
    before = reg.revision()
    reg.counter_set(b"s1", 3)  # a handshake is not a change the sessions care about
    cli = open_again()
    cli.revoke(b"s1", "lost")
    assert reg.revision() != before
    assert reg.is_revoked(b"s1") and reg.device_epoch(b"s1") is None
    assert reg.get(b"s1").revoke_reason == "lost"


def test_padding_is_set_read_by_another_instance_and_cleared(backend) -> None:
    from device.padding import PadPolicy
    reg, _, open_again = backend
    reg.provision(b"s1", os.urandom(32), SUITE)
    assert reg.padding(b"s1") is None  # no row: the device does not pad
    before = reg.revision()
    reg.set_padding(b"s1", PadPolicy((32, 64), hs=(64, 128), down=(32,)))
    other = open_again()
    pol = other.padding(b"s1")
    assert pol is not None and other.revision() != before
    assert (pol.hs, pol.up, pol.down) == ((64, 128), (32, 64), (32,))
    other.set_padding(b"s1", None)
    assert reg.padding(b"s1") is None


def test_rotation_bookkeeping(tmp_path: Path, backend) -> None:
    reg, kp, _ = backend
    reg.provision(b"old", os.urandom(32), SUITE)
    kp2 = generate_keypair()
    write_key_file(tmp_path / "hub1-2.key", kp2)
    reg.rotate_to(kp2.pub, tmp_path / "hub1-2.key")
    assert reg.live_pubs() == [kp2.pub, kp.pub]
    assert reg.statics() == [(kp2.priv, kp2.pub), (kp.priv, kp.pub)]
    with pytest.raises(RegistryRefusal):
        reg.rotate_to(generate_keypair().pub, tmp_path / "x.key")
    with pytest.raises(RegistryRefusal, match="pin only the old key"):
        reg.retire_previous()
    reg.provision(b"old", os.urandom(32), SUITE, replace=True)
    assert reg.retire_previous() == kp.pub
    assert reg.live_pubs() == [kp2.pub] and not reg.static_live(kp.pub)
    assert [k["state"] for k in reg.peer_keys()] == ["current", "retired"]


def test_refusals_are_counted_by_reason_with_unknown_ids_folded(backend) -> None:
    reg, _, open_again = backend
    reg.provision(b"s1", os.urandom(32), SUITE)
    for _ in range(3):
        reg.count_refusal(b"s1", "auth")
    reg.count_refusal(b"forged-1", "auth")
    reg.count_refusal(b"forged-2", "auth")
    reg.flush_refusals()
    got = {(r["device_id"], r["reason"]): r["count"] for r in open_again().refusals()}
    assert got == {("s1", "auth"): 3, ("(unknown)", "auth"): 2}
    assert UNKNOWN_DEVICE == b""


def test_a_counter_never_goes_down_on_postgresql(backend) -> None:
    # SQLite's single writer cannot race; PostgreSQL's counter_set is a
    # conditional statement, so a stale writer is refused, never obeyed.
    reg, _, _ = backend
    reg.provision(b"s1", os.urandom(32), SUITE)
    reg.counter_set(b"s1", 10)
    if type(reg) is Registry:
        pytest.skip("SQLite: one writer at a time; the race is PostgreSQL's")
    with pytest.raises(StorageError, match="already"):
        reg.counter_set(b"s1", 10)
    with pytest.raises(StorageError):
        reg.counter_set(b"s1", 4)
    assert reg.counter_get(b"s1") == 10


def test_a_missing_registry_is_refused_with_how_to_create_it(tmp_path: Path, pg_database: Callable[[], str]) -> None:
    from moteseal.keys.registry_pg import PgRegistry
    with pytest.raises(RegistryError, match="keygen --peer"):
        Registry(tmp_path / "nope.sqlite")
    with pytest.raises(RegistryError, match="no registry in this database"):
        PgRegistry(pg_database())


def test_copy_from_sqlite_moves_every_device_with_its_counter(tmp_path: Path, pg_dsn: str) -> None:
    from moteseal.keys.registry_pg import PgRegistry
    kp = generate_keypair()
    write_key_file(tmp_path / "hub1.key", kp)
    src = Registry(tmp_path / "r.sqlite", create_for_peer=b"hub1")
    src.add_peer_key(kp.pub, tmp_path / "hub1.key")
    psks = {f"d{i}".encode(): os.urandom(32) for i in range(5)}
    for d, p in psks.items():
        src.provision(d, p, SUITE)
    src.counter_set(b"d3", 77)
    src.revoke(b"d4")
    from device.padding import PadPolicy
    src.set_padding(b"d1", PadPolicy((32, 64)))
    dst = PgRegistry(pg_dsn, create_for_peer=b"hub1")
    try:
        assert dst.copy_from(src) == 5
        assert all(dst.psk_for(d) == p for d, p in psks.items())
        assert dst.counter_get(b"d3") == 77 and dst.is_revoked(b"d4")
        assert dst.padding(b"d1") is not None and dst.padding(b"d0") is None
        assert dst.get(b"d0").pins == [kp.pub] and dst.statics() == [(kp.priv, kp.pub)]
        with pytest.raises(RegistryError, match="already holds"):
            dst.copy_from(src)
    finally:
        src.close()
        dst.close()


def test_the_dsn_password_is_never_in_messages(pg_server, tmp_path: Path) -> None:
    from moteseal.keys.registry_pg import PgRegistry, show_dsn
    dsn = pg_server.new_database()
    assert pg_server.password in dsn and pg_server.password not in show_dsn(dsn)
    with pytest.raises(RegistryError) as e:
        PgRegistry(dsn)
    assert pg_server.password not in str(e.value)
    bad = dsn.replace(pg_server.password, pg_server.password + "x")
    t = time.monotonic()
    with pytest.raises(RegistryError, match="cannot connect") as e2:
        PgRegistry(bad)
    assert pg_server.password not in str(e2.value) and time.monotonic() - t < 60


def test_padding_is_recorded_and_put_in_bundles_on_both_backends(backend) -> None:
    # PostgreSQL's schema once lacked the padding table: provision failed.
    from device.padding import PadPolicy
    from moteseal.keys.provision import provision_device
    reg, _, open_again = backend
    assert provision_device(reg, b"p0", SUITE, {})[1].pad is None  # no row: does not pad
    provision_device(reg, b"p1", SUITE, {}, pad=PadPolicy((32, 64)))
    again = open_again()
    assert again.padding(b"p1").up == (32, 64) and again.padding(b"p0") is None

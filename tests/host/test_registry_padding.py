"""Padding per device from the registry (issue 17, "Padding"):
``moteseal provision --pad`` records the buckets in the registry and the
bundle, the peer pads by the registry (``Registry.padding``, what
``PeerSessions`` asks), the device by its bundle, so readings of different
length in one bucket travel in envelopes of equal length both ways; a bad
bucket list is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.padding import PadPolicy
from device.peer import PeerSessions
from device.session import EV_DATA, EV_HANDSHAKE
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import device_session, provision_device, read_bundle
from moteseal.keys.records import RegistryError, pad_policy, parse_buckets
from moteseal.keys.registry import Registry

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MOTESEAL_CONFIG=str(tmp / "none.toml"))
    (tmp / "none.toml").write_text("")
    return subprocess.run([sys.executable, "-m", "moteseal.cli.main", *args], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture
def reg(tmp_path: Path) -> str:
    path = str(tmp_path / "hub1.sqlite")
    r = cli(tmp_path, "keygen", "--out", str(tmp_path / "hub1.key"), "--peer", "hub1",
            "--registry", path)
    assert r.returncode == 0, r.stderr
    return path


def provision(tmp: Path, reg: str, dev: str, *extra: str) -> subprocess.CompletedProcess:
    return cli(tmp, "provision", dev, "--registry", reg, "--out", str(tmp / f"{dev}.bundle"),
               "--link", "none", "--json", *extra)


def test_provision_pad_goes_into_the_registry_and_the_bundle(tmp_path, reg) -> None:
    r = provision(tmp_path, reg, "s-1", "--pad", "32,64,128", "--pad-up", "64")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pad"] == {"hs": [32, 64, 128], "up": [64], "down": [32, 64, 128]}
    b = read_bundle(tmp_path / "s-1.bundle")
    assert (b.pad.hs, b.pad.up, b.pad.down) == ((32, 64, 128), (64,), (32, 64, 128))
    with Registry(reg) as rg:
        p = rg.padding(b"s-1")
        assert (p.hs, p.up, p.down) == ((32, 64, 128), (64,), (32, 64, 128))
        assert rg.padding(b"unknown") is None
    # Re-provisioned without --pad: the registry's padding stays, in the new bundle too.
    r = provision(tmp_path, reg, "s-1", "--replace")
    assert r.returncode == 0 and read_bundle(tmp_path / "s-1.bundle").pad.up == (64,)
    # --pad off: neither pads any more.
    r = provision(tmp_path, reg, "s-1", "--replace", "--pad", "off")
    assert r.returncode == 0 and json.loads(r.stdout)["pad"] is None
    assert read_bundle(tmp_path / "s-1.bundle").pad is None
    with Registry(reg) as rg:
        assert rg.padding(b"s-1") is None


@pytest.mark.parametrize("args, message", [
    (("--pad", "64,32"), "rising"),
    (("--pad", "0"), "rising"),
    (("--pad", "32,x"), "e.g. 32,64,128,256"),
    (("--pad", "1,2,3,4,5,6,7,8,9"), "1..8"),
    (("--pad-up", "64"), "need --pad"),
    (("--pad", "off", "--pad-up", "64"), "takes no"),
])
def test_bad_buckets_are_a_usage_error_and_change_nothing(tmp_path, reg, args, message) -> None:
    r = provision(tmp_path, reg, "s-2", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stdout + r.stderr and "Traceback" not in r.stderr
    with Registry(reg) as rg:
        assert rg.psk_for(b"s-2") is None and rg.padding(b"s-2") is None


def test_parse_buckets_and_policy() -> None:
    assert parse_buckets("32,64,128,256") == (32, 64, 128, 256)
    with pytest.raises(RegistryError):
        parse_buckets("")
    p = pad_policy("32,64", down="128")
    assert (p.hs, p.up, p.down) == ((32, 64), (32, 64), (128,))


def test_the_peer_pads_by_the_registry_and_equal_buckets_give_equal_envelopes(tmp_path, reg) -> None:
    backend = NaclBackend()
    with Registry(reg, passphrase=None) as rg:
        _rec, bundle = provision_device(rg, b"s-3", SUITE, {"kind": "none"},
                                        pad=PadPolicy((32, 64, 128)))
        peer = PeerSessions(backend, rg.peer_id, rg)
        dev = device_session(backend, bundle, Msg1Counter(NonpersistingCounterStore()))
        hs = dev.handshake(b"{}")
        r = peer.receive(hs)
        assert r.early == b"{}" or r.payload == b"{}"
        assert dev.receive(r.reply)[0] == EV_HANDSHAKE
        # Readings of 3, 17 and 31 bytes all fill the 32-byte bucket.
        ups = [dev.send(b"x" * n) for n in (3, 17, 31)]
        assert len({len(e) for e in ups}) == 1
        assert [peer.receive(e).payload for e in ups] == [b"x" * n for n in (3, 17, 31)]
        # 32 bytes and the mark do not fit 32: the next bucket.
        assert len(dev.send(b"x" * 32)) == len(ups[0]) + 32
        # Down: the peer pads by the registry; the device strips it.
        downs = [peer.send(b"s-3", b"c" * n) for n in (1, 20)]
        assert len(downs[0]) == len(downs[1])
        assert [dev.receive(e) for e in downs] == [(EV_DATA, b"c"), (EV_DATA, b"c" * 20)]
        # A device the registry holds no padding for is not padded.
        _rec, plain = provision_device(rg, b"s-4", SUITE, {"kind": "none"})
        assert plain.pad is None and rg.padding(b"s-4") is None

"""A device says at boot which code runs its primitives, and a flash build
that ships no fallback stops there when a fast path cannot load (issue 16
item 3): ``micropython_port/main.py`` Rule 3, on the real MicroPython unix
port running a real ``moteseal flash build`` (x64 ``.mpy``).

The fault case swaps the build's ``_chachapoly_viper.mpy`` for one compiled
for armv6m: the x86-64 port refuses its native code ("incompatible .mpy
arch", a ValueError), exactly what a board whose port cannot run the build's
native code does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash.build import build, compile_module
from moteseal.keys.provision import Bundle, write_bundle
from tests.mp_helpers import ROOT, mp_binary

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def flash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("boot")
    b = NaclBackend()
    # An MQTT device whose broker is a closed port: the boot line comes
    # before the link is opened, the run ends after --run-ms.
    write_bundle(tmp / "d.bundle", Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])],
                                          b.random_bytes(32), "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                          {"kind": "mqtt", "host": "127.0.0.1", "port": 9}))
    build(tmp / "d.bundle", tmp / "flash", "x64")
    return tmp / "flash"


def _boot(flash: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([mp_binary(), "-X", "heapsize=72k", "main.py", "--count", "1",
                           "--run-ms", "300", "--state", str(flash.parent / "ctr")],
                          capture_output=True, text=True, timeout=60, cwd=flash,
                          env={"MICROPYPATH": f"{flash}:.frozen", "PATH": "/usr/bin:/bin"})


def test_the_build_ships_no_fallback_for_a_primitive_with_a_fast_path(flash: Path) -> None:
    shipped = {p.relative_to(flash).as_posix() for p in flash.rglob("*.mpy")}
    assert {"micropython_port/_fe25519_viper.mpy", "micropython_port/_chachapoly_viper.mpy"} <= shipped
    assert not {"micropython_port/_x25519_py.mpy", "micropython_port/_chachapoly_py.mpy"} & shipped


def test_the_device_prints_its_primitive_paths_first_at_boot(flash: Path) -> None:
    p = _boot(flash)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "moteseal paths x25519=viper aead=viper"
    assert '"event": "summary"' in lines[-1]


def test_a_fast_path_that_cannot_load_stops_the_device_at_boot(flash: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "flash"
    shutil.copytree(flash, bad)
    compile_module(ROOT / "micropython_port" / "_chachapoly_viper.py",
                   bad / "micropython_port" / "_chachapoly_viper.mpy", "armv6m",
                   "micropython_port/_chachapoly_viper.py")
    p = _boot(bad)
    assert p.returncode == 1
    out = p.stdout + p.stderr  # the unix port prints the traceback on stdout
    assert out.splitlines()[0] == "moteseal paths x25519=viper aead=python", out
    assert "LocalError: aead: the fast path did not load and this build has no fallback" in out
    assert "event" not in out  # stopped before the link or a handshake

"""``moteseal flash build`` and the fast paths: the asm_thumb X25519 ships
for ARMv7-M/ARMv7E-M only (instead of the viper one), the Thumb-1
asm_thumb1 modules for ARMv6-M only (instead of both viper ones), and an arch whose board could not load a fast
path (mpy-cross cannot compile it: rv64imc has no viper emitter) is refused
unless ``--allow-slow``, which records the slow primitives in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from moteseal.cli.flash import flash_group
from moteseal.flash.build import ARCHES, THUMB2_ARCHES, FlashError, Manifest, build, fast_paths
from moteseal.flash.board import arch_loads, check_board
from tests.host.test_flash import bundle_file  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(180)

THUMB = "micropython_port/_fe25519_thumb.mpy"
VIPER = {"micropython_port/_fe25519_viper.mpy", "micropython_port/_chachapoly_viper.mpy"}


def _files(m: Manifest) -> set[str]:
    return {p for p, _, _ in m.files}


def test_armv7m_ships_the_asm_thumb_x25519_as_armv7m_native_code(bundle_file: Path, tmp_path: Path) -> None:
    m = build(bundle_file, tmp_path / "o", "armv7m", device_id="mote-1")
    assert THUMB in _files(m) and m.slow == []
    # The viper X25519 and AEAD would never load there: left out.
    assert "micropython_port/_chachapoly_thumb.mpy" in _files(m)
    assert "micropython_port/_chachapoly_viper.mpy" not in _files(m)
    assert "micropython_port/_fe25519_viper.mpy" not in _files(m)
    data = (tmp_path / "o" / THUMB).read_bytes()
    assert data[0:2] == b"M\x06" and data[2] >> 2 == ARCHES["armv7m"]  # .mpy header: native arch
    assert fast_paths("armv7m")["x25519"] == "asm_thumb"
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["slow"] == []


THUMB1 = {"micropython_port/_fe25519_thumb1.mpy", "micropython_port/_chachapoly_thumb1.mpy"}


def test_armv6m_ships_the_thumb1_modules_instead_of_viper(bundle_file: Path, tmp_path: Path) -> None:
    m = build(bundle_file, tmp_path / "o", "armv6m", device_id="mote-1")
    assert THUMB1 <= _files(m) and not (VIPER | {THUMB}) & _files(m) and m.slow == []
    for f in THUMB1:  # armv6m native code (mpy-cross accepted it with no Thumb-2 instruction)
        data = (tmp_path / "o" / f).read_bytes()
        assert data[0:2] == b"M\x06" and data[2] >> 2 == ARCHES["armv6m"]
    assert fast_paths("armv6m") == {"x25519": "asm_thumb1", "aead": "asm_thumb1", "blake2s": "viper"}
    m7 = build(bundle_file, tmp_path / "o7", "armv7m", device_id="mote-1")
    assert not THUMB1 & _files(m7)  # ARMv7-M has the faster Thumb-2 modules


@pytest.mark.parametrize("arch", ["xtensawin"])
def test_other_archs_leave_the_thumb_module_out_and_keep_viper(bundle_file: Path, tmp_path: Path,
                                                                arch: str) -> None:
    m = build(bundle_file, tmp_path / "o", arch, device_id="mote-1")
    assert not ({THUMB} | THUMB1) & _files(m) and VIPER <= _files(m) and m.slow == []
    assert fast_paths(arch) == {"x25519": "viper", "aead": "viper", "blake2s": "viper"}
    assert arch not in THUMB2_ARCHES


def test_an_arch_that_cannot_load_the_fast_path_is_refused_unless_allowed(bundle_file: Path,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(FlashError) as e:
        build(bundle_file, tmp_path / "o", "rv64imc", device_id="mote-1")
    assert e.value.exit_code == 2 and "--allow-slow" in str(e.value) and "cannot load the fast" in str(e.value)
    assert not (tmp_path / "o").exists()
    m = build(bundle_file, tmp_path / "o", "rv64imc", device_id="mote-1", allow_slow=True)
    assert sorted(m.slow) == ["aead", "x25519"]
    assert not (VIPER | {THUMB}) & _files(m)
    assert "micropython_port/x25519.mpy" in _files(m)  # with its pure-Python fallback
    assert sorted(Manifest.load(tmp_path / "o").slow) == ["aead", "x25519"]


def test_the_cli_refuses_with_exit_2_and_builds_with_allow_slow(bundle_file: Path, tmp_path: Path) -> None:
    args = ["build", "--device", "mote-1", "--bundle", str(bundle_file), "--arch", "rv64imc",
            "--out", str(tmp_path / "o"), "--json"]
    r = CliRunner().invoke(flash_group, args)
    assert r.exit_code == 2, r.output
    r = CliRunner().invoke(flash_group, args + ["--allow-slow"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.output.strip().splitlines()[-1])["slow"]) == ["aead", "x25519"]


def test_a_cortex_m3_board_naming_itself_armv7em_takes_an_armv7m_build() -> None:
    # MicroPython on a Cortex-M3 reports armv7em (6) in sys.implementation._mpy
    # (seen on the qemu target); it loads armv6m..armv7em native code.
    assert arch_loads(ARCHES["armv7em"], "armv7m") and arch_loads(ARCHES["armv7em"], "armv6m")
    check_board(Manifest("d", "armv7m", (6, 3), []), 6, 3, ARCHES["armv7em"])
    for board, bundle in (("armv6m", "armv7m"), ("armv7em", "armv7emsp"), ("xtensawin", "xtensa"),
                          ("x64", "x86"), ("armv7m", "xtensawin")):
        assert not arch_loads(ARCHES[board], bundle)
        with pytest.raises(FlashError):
            check_board(Manifest("d", bundle, (6, 3), []), 6, 3, ARCHES[board])

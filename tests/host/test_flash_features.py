"""Optional features of the flash build (issue 16 item 6; ``FEATURES`` in
``moteseal/flash/build.py``; docs/micropython.md, "Flash size").

A build ships groups, updates and the user's fields only when asked
(``--features``), padding only for a bundle with a ``pad`` policy, and the
TLS handshake only for a link with a ``ca`` or ``pin``. What a build leaves
out must fail clearly when a program asks for it, never silently: the
device programs here run on the real MicroPython unix port from the build.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.padding import PadPolicy
from moteseal.cli.flash import flash_group
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash.build import (DEFAULT_FEATURES, FEATURES, FlashError, build, clear_flags,
                                  parse_features, source_dirs)
from moteseal.keys.provision import Bundle, write_bundle
from tests.host.test_flash import bundle_file  # noqa: F401 - the fixture (an MQTT, SHA-256 device)
from tests.mp_helpers import mp_binary

pytestmark = pytest.mark.timeout(180)

OPTIONAL = {
    "groups": {"device/group.mpy", "micropython_port/app_groups.mpy"},
    "updates": {"device/transfer.mpy", "micropython_port/update.mpy",
                "micropython_port/update_state.mpy", "micropython_port/app_update.mpy"},
    "fields": {"device/reading.mpy"},
}


def _paths(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.mpy")}


def _mp(out: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([mp_binary(), "-c", script], cwd=out, capture_output=True, text=True,
                          timeout=60, env={"MICROPYPATH": ".frozen", "PATH": "/usr/bin:/bin"})


def _bundle(tmp: Path, link: dict, pad: PadPolicy | None = None) -> Path:
    b = NaclBackend()
    tmp.mkdir()
    path = tmp / "mote-1.bundle"
    write_bundle(path, Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])], b.random_bytes(32),
                              "Noise_NKpsk0_25519_ChaChaPoly_SHA256", link, pad=pad))
    return path


def test_every_feature_flag_is_set_once_where_the_build_clears_it() -> None:
    root = source_dirs()[0].parent
    for name, (modules, flags) in FEATURES.items():
        assert modules, name
        for module, flag in flags.items():
            src = (root / f"{module}.py").read_text()
            out = clear_flags(src, [flag])
            assert f"\n{flag} = const(0)" in out and out.count("\n") == src.count("\n"), (name, module)
    with pytest.raises(FlashError, match="not set once"):
        clear_flags("x = 1\n", ["_GROUPS"])


def test_feature_names_parse_and_an_unknown_one_is_refused() -> None:
    assert parse_features("default") == tuple(sorted(DEFAULT_FEATURES))
    assert parse_features("none") == ()
    assert parse_features("all") == tuple(sorted(FEATURES))
    assert parse_features("default,updates") == tuple(sorted(set(DEFAULT_FEATURES) | {"updates"}))
    with pytest.raises(FlashError, match="unknown feature 'gruops'") as e:
        parse_features("groups,gruops")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("features", [(), ("fields",), ("groups", "updates"), tuple(FEATURES)])
def test_a_build_ships_exactly_the_modules_of_its_features(bundle_file: Path, tmp_path: Path,
                                                           features: tuple[str, ...]) -> None:
    m = build(bundle_file, tmp_path / "o", "x64", device_id="mote-1", features=features)
    paths = _paths(tmp_path / "o")
    for name, mods in OPTIONAL.items():
        assert (mods <= paths) if name in features else not (mods & paths), name
    assert m.features == sorted(features)
    doc = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert doc["features"] == sorted(features)
    # No pad policy in this bundle: no padding module.
    assert "device/padding.mpy" not in paths


def test_the_default_build_has_the_default_features_and_all_modules_has_every_one(bundle_file: Path,
                                                                                 tmp_path: Path) -> None:
    m = build(bundle_file, tmp_path / "d", "x64", device_id="mote-1")
    assert m.features == sorted(DEFAULT_FEATURES) == ["fields"]
    m = build(bundle_file, tmp_path / "a", "x64", device_id="mote-1", all_modules=True)
    assert m.features == sorted(FEATURES)
    assert set().union(*OPTIONAL.values()) | {"device/padding.mpy"} <= _paths(tmp_path / "a")


def test_padding_ships_with_a_pad_policy_and_the_tls_handshake_with_a_ca(tmp_path: Path) -> None:
    plain = _bundle(tmp_path / "p", {"kind": "mqtt", "host": "h"})
    build(plain, tmp_path / "plain", "x64", features=())
    padded = _bundle(tmp_path / "q", {"kind": "mqtt", "host": "h", "ca": b"\x30\x00"}, PadPolicy((32, 64)))
    build(padded, tmp_path / "padded", "x64", features=())
    assert "device/padding.mpy" not in _paths(tmp_path / "plain")
    assert "device/padding.mpy" in _paths(tmp_path / "padded")
    script = ("import micropython_port.mqtt_tls as T\n"
              "print(hasattr(T, 'wrap'), hasattr(T, 'name_failure'))\n")
    for d, want in (("plain", "False True"), ("padded", "True True")):
        p = _mp(tmp_path / d, script)
        assert p.returncode == 0 and p.stdout.strip() == want, p.stdout + p.stderr


# What a program asks of a build: groups, fields, the update boot step.
ASK = """
from micropython_port.main import load_bundle, _update_boot
from device.errors import LocalError
b = load_bundle('moteseal.bundle')
print('boot', _update_boot())
from micropython_port.app import Device
for kw in ({'groups': 2}, {'read': lambda w: None}):
    try:
        Device(b, 'ctr', **kw)
        print('made')
    except LocalError as e:
        print('refused', e.args[0])
"""


def test_a_build_without_a_feature_refuses_it_clearly_and_skips_the_update_boot(bundle_file: Path,
                                                                                tmp_path: Path) -> None:
    lean, full = tmp_path / "lean", tmp_path / "full"
    build(bundle_file, lean, "x64", device_id="mote-1", features=())
    build(bundle_file, full, "x64", device_id="mote-1", features=tuple(FEATURES))
    for d in (lean, full):
        # An update's state file: the boot step acts on it only with updates
        # (without them its modules are absent: importing them would fail).
        (d / ".xstate").write_text("{}")
    p = _mp(lean, ASK)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[:3] == ["boot None", "refused no groups", "refused no fields"], p.stdout
    p = _mp(full, ASK)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[1:3] == ["made", "made"], p.stdout


def test_the_cli_takes_features_and_refuses_an_unknown_one(bundle_file: Path, tmp_path: Path) -> None:
    args = ["build", "--device", "mote-1", "--bundle", str(bundle_file), "--arch", "x64", "--json"]
    r = CliRunner().invoke(flash_group, args + ["--out", str(tmp_path / "a"), "--features", "default,groups"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["features"] == ["fields", "groups"]
    r = CliRunner().invoke(flash_group, args + ["--out", str(tmp_path / "b")])
    assert json.loads(r.output)["features"] == ["fields"]
    r = CliRunner().invoke(flash_group, args + ["--out", str(tmp_path / "c"), "--features", "gps"])
    assert r.exit_code == 2 and "unknown feature 'gps'" in r.output
    assert not (tmp_path / "c").exists()

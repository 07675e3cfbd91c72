"""The flash bundle of an MQTT/SHA-256 device for the 32-bit boards (issue
16 item 6): what each architecture ships, and its size.

- Per arch, one native path per primitive: armv7m the asm_thumb X25519 (no
  viper field code), armv6m the Thumb-1 asm_thumb1 one (no viper either); the pure-Python fallbacks are
  left out wherever the fast path compiled (a board that cannot load it
  stops at boot: tests/micropython/test_mp_boot_paths.py).
- Sizes are held to budgets per feature set (``--features``; a regression
  guard at today's sizes): the default (``DEFAULT_FEATURES``: the user's
  fields), with updates, and with every feature (groups, updates,
  fields). The bundle here has no pad policy and no TLS, so padding and
  the TLS handshake are out of all of them (docs/micropython.md, "Flash
  size").
- The issue's goal of 32 KiB for armv6m and armv7m is met by the default
  build (armv7m 31.1 KiB: 2.9 KiB of asm_thumb code and 27.9 KiB of Python
  modules after the lean build's name shrinking and flags,
  moteseal/flash/shrink.py; armv6m 31.6 KiB: 3.4 + 27.9), and held by
  ``test_the_bundle_meets_the_32k_goal``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moteseal.flash.build import DEFAULT_FEATURES, FEATURES, Manifest, build
from tests.host.test_flash import bundle_file  # noqa: F401 - the fixture (an MQTT, SHA-256 device)

pytestmark = pytest.mark.timeout(180)

KIB = 1024
GOAL = 32 * KIB
# Today's sizes plus a little (armv7m ships the asm_thumb X25519 and AEAD,
# armv6m the asm_thumb1 ones, neither any viper X25519 or AEAD), per feature set.
SETS = {"default": None, "updates": DEFAULT_FEATURES + ("updates",), "all": tuple(FEATURES)}
BUDGET = {("armv7m", "default"): GOAL, ("armv7m", "updates"): 37.5 * KIB,
          ("armv7m", "all"): 41 * KIB,
          ("armv6m", "default"): GOAL, ("armv6m", "updates"): 38 * KIB,
          ("armv6m", "all"): 41.5 * KIB}
FALLBACKS = {"micropython_port/_x25519_py.mpy", "micropython_port/_chachapoly_py.mpy",
             "micropython_port/_blake2s_py.mpy"}


def _build(bundle: Path, tmp: Path, arch: str, features: tuple[str, ...] | None = None) -> Manifest:
    return build(bundle, tmp / arch, arch, device_id="mote-1", features=features)


def _files(m: Manifest) -> dict[str, int]:
    return {p: s for p, s, _ in m.files}


@pytest.mark.parametrize("arch", ["armv6m", "armv7m"])
def test_each_arch_ships_one_native_path_per_primitive_and_no_fallback(bundle_file: Path,
                                                                       tmp_path: Path,
                                                                       arch: str) -> None:
    files = _files(_build(bundle_file, tmp_path, arch))
    assert not FALLBACKS & set(files)
    x25519 = {"armv6m": "micropython_port/_fe25519_thumb1.mpy",
              "armv7m": "micropython_port/_fe25519_thumb.mpy"}
    assert x25519[arch] in files and not (set(x25519.values()) - {x25519[arch]}) & set(files)


def test_all_modules_and_allow_slow_builds_keep_the_fallbacks(bundle_file: Path, tmp_path: Path) -> None:
    m = build(bundle_file, tmp_path / "all", "armv6m", device_id="mote-1", all_modules=True)
    assert {"micropython_port/_x25519_py.mpy", "micropython_port/_chachapoly_py.mpy"} <= set(_files(m))


@pytest.mark.parametrize("arch,features", sorted(BUDGET))
def test_the_bundle_stays_within_its_budget(bundle_file: Path, tmp_path: Path, arch: str,
                                            features: str) -> None:
    m = _build(bundle_file, tmp_path, arch, SETS[features])
    assert m.total_bytes <= BUDGET[arch, features], (
        f"{arch} {features}: {m.total_bytes / KIB:.1f} KiB > {BUDGET[arch, features] / KIB:.1f} KiB; "
        "largest: " + ", ".join(f"{p} {s}" for p, s in
                                sorted(_files(m).items(), key=lambda x: -x[1])[:6]))


def test_each_feature_costs_flash_and_the_sets_nest(bundle_file: Path, tmp_path: Path) -> None:
    sizes = {name: _build(bundle_file, tmp_path / name, "armv7m", f).total_bytes
             for name, f in {"none": (), **SETS}.items()}
    assert sizes["none"] < sizes["default"] < sizes["updates"] < sizes["all"]
    # Updates are the largest optional feature (transfer, update, app_update: > 4 KiB).
    assert sizes["updates"] - sizes["default"] > 4 * KIB


@pytest.mark.parametrize("arch", ["armv6m", "armv7m"])
def test_the_bundle_meets_the_32k_goal(bundle_file: Path, tmp_path: Path, arch: str) -> None:
    assert _build(bundle_file, tmp_path, arch).total_bytes <= GOAL

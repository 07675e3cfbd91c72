"""``moteseal flash build --romfs`` and its deploy (issue 16 item 2): the
``.mpy`` files go into one ROMFS image (mpremote's writer, the format
``mpremote romfs deploy`` puts in an rp2/stm32 ROM partition), main.py and
the bundle stay on the filesystem, and deploy writes the image with
``romfs deploy``, removes filesystem ``.mpy`` copies that would shadow
``/rom``, and reads every SHA-256 back (the ``.mpy`` ones under ``/rom/``).

The image is read back here by an independent reader of the format
(``_unpack``); the qemu lane serves the same images to MicroPython
(tests/qemu/test_qemu_romfs.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from moteseal.cli.flash import flash_group
from moteseal.flash.board import deploy
from moteseal.flash.build import FlashError, Manifest, build, verify_local
from tests.host.test_flash import UnixDirBoardForTestingOnly, _exec_on, bundle_file, parse_with_mpremote  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def _uint(data: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        b = data[i]
        i += 1
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, i


def _unpack(data: bytes, prefix: str = "") -> dict[str, bytes]:
    """{path: data} of a ROMFS record list (kinds: 4 directory, 5 file with
    a verbatim data record 2)."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        kind, i = _uint(data, i)
        n, i = _uint(data, i)
        payload, i = data[i:i + n], i + n
        if kind in (4, 5):
            nlen, j = _uint(payload, 0)
            name = prefix + payload[j:j + nlen].decode()
            rest = payload[j + nlen:]
            if kind == 4:
                out.update(_unpack(rest, name + "/"))
            else:
                k, j = _uint(rest, 0)
                dlen, j = _uint(rest, j)
                assert k == 2
                out[name] = rest[j:j + dlen]
    return out


def unpack_romfs(image: bytes) -> dict[str, bytes]:
    assert image[:3] == b"\xd2\xcd\x31"
    n, i = _uint(image, 3)
    assert i + n == len(image)
    return _unpack(image[i:])


@pytest.fixture
def romfs_build(bundle_file: Path, tmp_path: Path) -> tuple[Path, Manifest]:
    out = tmp_path / "flash"
    # x64: the deploy tests' board is the unix port
    return out, build(bundle_file, out, "x64", device_id="mote-1", romfs=True)


def test_the_image_holds_exactly_the_builds_mpy_files(romfs_build) -> None:
    out, m = romfs_build
    image = (out / "romfs.img").read_bytes()
    assert m.romfs == ("romfs.img", len(image), hashlib.sha256(image).hexdigest())
    mpys = {p: (out / p).read_bytes() for p, _, _ in m.files if p.endswith(".mpy")}
    assert unpack_romfs(image) == mpys and len(mpys) > 15
    assert (out / "moteseal.bundle").read_bytes() not in image  # the secret stays out
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["romfs"]["path"] == "romfs.img" and Manifest.load(out).romfs == m.romfs


def test_a_changed_image_is_refused_before_deploy(romfs_build) -> None:
    out, m = romfs_build
    img = out / "romfs.img"
    img.write_bytes(img.read_bytes()[:-1] + b"\0")
    assert verify_local(out, m) == ["romfs.img"]
    with pytest.raises(FlashError, match="romfs.img"):
        deploy(out, "/dev/ttyACM0", runner=lambda argv: "")


class RomfsBoard(UnixDirBoardForTestingOnly):
    """Also carries out ``romfs deploy`` (unpacked into rom/ of the board's
    directory) and reads ``/rom/...`` there."""

    def __call__(self, argv: list[str]) -> str:
        cmd, args = parse_with_mpremote(argv)[2]
        if cmd == "romfs":
            assert args.command == ["deploy"]
            self.commands.append("romfs deploy")
            for path, data in unpack_romfs(Path(args.path).read_bytes()).items():
                (self.root / "rom" / path).parent.mkdir(parents=True, exist_ok=True)
                (self.root / "rom" / path).write_bytes(data)
            return ""
        if cmd == "exec":
            self.commands.append("exec")
            out = _exec_on(self.root, args.expr[0].replace("'/rom/", "'rom/"))
            return out.replace(" rom/", " /rom/")
        return super().__call__(argv)


def test_deploy_writes_the_image_and_only_the_rest_to_the_filesystem(romfs_build, tmp_path) -> None:
    out, m = romfs_build
    board = RomfsBoard(tmp_path / "board")
    (board.root / "device").mkdir(parents=True)
    (board.root / "device" / "noise.mpy").write_bytes(b"an old build: would shadow /rom")
    deploy(out, "/dev/ttyACM0", runner=board)
    assert board.commands == ["exec", "romfs deploy", "cp :main.py", "cp :moteseal.bundle", "exec"]
    assert not (board.root / "device" / "noise.mpy").exists()
    assert (board.root / "rom" / "device" / "noise.mpy").read_bytes() == (out / "device" / "noise.mpy").read_bytes()


def test_deploy_names_a_module_the_rom_holds_differently(romfs_build, tmp_path) -> None:
    out, _ = romfs_build

    class Damaging(RomfsBoard):
        def __call__(self, argv: list[str]) -> str:
            r = super().__call__(argv)
            noise = self.root / "rom" / "device" / "noise.mpy"
            if noise.exists() and self.commands[-1] == "romfs deploy":
                noise.write_bytes(noise.read_bytes()[:-1])
            return r

    board = Damaging(tmp_path / "board")
    board.root.mkdir()
    with pytest.raises(FlashError, match="device/noise.mpy"):
        deploy(out, "/dev/ttyACM0", runner=board)


def test_the_cli_builds_the_image_with_romfs(bundle_file: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(flash_group, ["build", "--device", "mote-1", "--bundle", str(bundle_file),
                                         "--board", "rp2", "--out", str(tmp_path / "o"), "--romfs",
                                         "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output.strip().splitlines()[-1])
    assert doc["romfs_bytes"] == (tmp_path / "o" / "romfs.img").stat().st_size
    r = CliRunner().invoke(flash_group, ["build", "--device", "mote-1", "--bundle", str(bundle_file),
                                         "--board", "rp2", "--out", str(tmp_path / "p"), "--json"])
    assert json.loads(r.output.strip().splitlines()[-1])["romfs_bytes"] is None
    assert not (tmp_path / "p" / "romfs.img").exists()
    shutil.rmtree(tmp_path / "o")

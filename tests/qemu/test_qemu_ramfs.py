"""The qemu port's RAM file system (``qemu/port/ramfs.c``): the board's
flash emulated in a fixed PSRAM region outside the GC heap, so that the
device's files (message-1 counter, a transfer's ``.part``/``.xfer``/
``.xstate``) behave on the 32-bit lane as on a board: ``open()`` with
read/readinto/write/seek/flush/close, ``os.stat``/``rename``/``remove``/
``listdir``, kept across a soft reset (a reboot keeps flash), and bad
requests refused with a specific ``OSError``, never a crash."""

from __future__ import annotations

import qemu_board

# Every test starts from an empty file system (the files survive the
# fixture's soft reset, as flash survives a reboot).
_WIPE = """import os
for n in os.listdir():
    if os.stat(n)[0] == 0x4000:
        for m in os.listdir(n):
            os.remove(n + "/" + m)
    else:
        os.remove(n)
"""


def run(board: qemu_board.Board, code: str) -> str:
    return board.exec(_WIPE + code).strip()


def test_write_read_seek_append_and_text_mode(board: qemu_board.Board) -> None:
    out = run(board, """
f = open("a.bin", "wb")
print(f.write(b"hello "), f.write(memoryview(b"xworld")[1:]))
f.flush(); f.close()
with open("a.bin", "ab") as f:
    f.write(b"!")
with open("a.bin", "rb") as f:
    b = bytearray(4)
    print(f.readinto(b), bytes(b), f.read(), f.read())
    f.seek(6); print(f.read(5), f.tell())
    f.seek(-1, 2); print(f.read())
with open("t.txt", "w") as f:
    f.write("12\\n34")
with open("t.txt") as f:
    s = f.read(); print(type(s).__name__, repr(s))
with open("t.txt", "r+b") as f:
    f.seek(1); f.write(b"9")
print(open("t.txt").read().split())
print(os.stat("a.bin")[6], os.stat("a.bin")[0] == 0x8000, os.stat("")[0] == 0x4000)
""")
    assert out.splitlines() == [
        "6 5", "4 b'hell' b'o world!' b''", "b'world' 11", "b'!'", "str '12\\n34'",
        "['19', '34']", "12 True True"]


def test_rename_replaces_atomically_and_remove_listdir(board: qemu_board.Board) -> None:
    out = run(board, """
open(".part", "wb").write(b"new")
open("data.bin", "wb").write(b"old")
open("d/x.mpy", "wb").write(b"x")
print(sorted(os.listdir()), os.listdir("d"), os.stat("d")[0] == 0x4000)
os.rename(".part", "data.bin")
print(open("data.bin", "rb").read(), sorted(os.listdir()))
os.remove("data.bin")
for op in (lambda: os.stat("data.bin"), lambda: os.remove("nope"), lambda: open("nope"),
           lambda: os.rename("nope", "x"), lambda: open("x" * 60, "w"), lambda: os.listdir("zz")):
    try:
        op(); print("no error")
    except OSError as e:
        print(e.errno)
try:
    open("a", "q")
except ValueError:
    print("mode")
""")
    lines = out.splitlines()
    assert lines[0] == "['.part', 'd', 'data.bin'] ['x.mpy'] True"
    assert lines[1] == "b'new' ['d', 'data.bin']"
    assert lines[2:] == ["2", "2", "2", "2", "22", "2", "mode"]  # ENOENT x4, EINVAL, ENOENT


def test_a_full_slot_or_table_is_refused_and_a_stale_file_is_closed(board: qemu_board.Board) -> None:
    out = run(board, """
f = open("big", "wb")
b = bytes(4096)
for i in range(64):
    f.write(b)
try:
    f.write(b"x")
except OSError as e:
    print("full", e.errno, os.stat("big")[6])
f.close()
g = open("big", "rb")
os.remove("big")
try:
    g.read(1)
except OSError as e:
    print("stale", e.errno)
try:
    for i in range(20):
        open("f%d" % i, "w").close()
except OSError as e:
    print("table", e.errno, len(os.listdir()))
""")
    assert out.splitlines() == [f"full 28 {256 * 1024}", "stale 9", "table 28 15"]


def test_files_survive_a_soft_reset_and_cost_no_heap(board: qemu_board.Board) -> None:
    out = run(board, """
import gc
gc.collect(); before = gc.mem_free()
with open("keep", "wb") as f:
    for i in range(64):
        f.write(bytes([i]) * 1024)
gc.collect(); print(before - gc.mem_free() < 1024)
""")
    assert out == "True"
    board.soft_reset()
    out = board.exec("import os\nd = open('keep', 'rb').read()\n"
                     "print(len(d), all(d[i * 1024] == i for i in range(64)), os.listdir())").strip()
    assert out == "65536 True ['keep']"

"""Fixtures for the 32-bit lane: moteseal's MicroPython firmware for qemu's
MPS2 AN385 board (Cortex-M3), built by ``qemu/qemu_fw.py`` from the PyPI sdist
of the MicroPython core and Debian's arm-none-eabi toolchain, and run by
``qemu/qemu_board.py``.

Every test here is skipped, with the reason, when a tool is missing or the
sdist cannot be fetched; a port that fails to compile is an error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "qemu"))

import qemu_board  # noqa: E402
import qemu_fw  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu: runs on MicroPython under qemu-system-arm (Cortex-M3)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session")
def qemu_firmware() -> Path:
    missing = qemu_fw.missing_tools()
    if missing:
        pytest.skip("qemu lane: missing " + ", ".join(missing)
                    + " (apt-get install " + " ".join(missing) + ")")
    try:
        t0 = time.monotonic()
        elf = qemu_fw.build()
    except qemu_fw.BuildError as exc:
        if "make failed" in str(exc):
            raise
        pytest.skip(f"qemu lane: firmware cannot be built: {exc}")
    dt = time.monotonic() - t0
    if dt > 1:
        print(f"\nqemu lane: firmware built in {dt:.1f}s -> {elf}")
    return elf


def target_files() -> list[tuple[str, bytes]]:
    """What the target can import: device/, micropython_port/, the primitive
    test hooks (as top-level ``mp_primitive_hooks``) and tests/qemu/target/."""
    files = qemu_board.repo_files(REPO)
    hooks = sorted((REPO / "tests").rglob("mp_primitive_hooks.py"))
    if hooks:
        files.append(("mp_primitive_hooks.py", hooks[0].read_bytes()))
    for p in sorted((HERE / "target").glob("*.py")):
        files.append((p.name, p.read_bytes()))
    return files


class _Session:
    """One qemu per test module, rebooted when a test left it unusable."""

    def __init__(self, elf: Path) -> None:
        self.elf = elf
        self.board: qemu_board.Board | None = None

    def fresh(self) -> qemu_board.Board:
        if self.board is not None:
            try:
                self.board.soft_reset(timeout=10)
                return self.board
            except qemu_board.BoardError:
                self.board.close()
        self.board = qemu_board.Board(self.elf, files=target_files())
        return self.board

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def session_on(elf: Path) -> Iterator[_Session]:
    """The body of a module-scoped session fixture: a ``_Session`` on ``elf``,
    closed after the module (also ``test_qemu_thumb1.m0_session``)."""
    s = _Session(elf)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def qemu_session(qemu_firmware: Path) -> Iterator[_Session]:
    yield from session_on(qemu_firmware)


@pytest.fixture
def board(qemu_session: _Session) -> qemu_board.Board:
    """A board with a fresh interpreter (soft reset; a new qemu if the last
    test left it stuck): nothing imported."""
    return qemu_session.fresh()

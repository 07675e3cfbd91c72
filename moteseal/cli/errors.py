"""The one mapping from failures to exit codes and error lines (CPython).

Every ``moteseal`` command ends through ``fail`` (``moteseal.cli.main``
catches what a command raises and asks ``describe`` for the exit code), so
the table in README.md holds for all of them:

  0  success
  1  the operation ran and found a failure (a vector failed, a link is down)
  2  usage error: bad option, missing file or directory, bad config key
  3  security refusal: wrong passphrase, a secret file readable by others,
     a tampered key or bundle, a refused key change

With ``--json`` the failure is also printed on stdout as
``{"error": MESSAGE, "exit_code": CODE}``. Messages never hold a key, a PSK,
a password or plaintext: they come from our exceptions, which do not either.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from device.errors import LocalError

__all__ = ["MissingDirectory", "describe", "fail", "require_parent"]


class MissingDirectory(LocalError):
    """An output file's directory does not exist (exit 2): we never create
    it, so a typo in a path cannot scatter secrets into a new tree."""

    exit_code = 2


def require_parent(path: str | Path, option: str) -> None:
    """Raise ``MissingDirectory`` unless ``path``'s directory exists."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise MissingDirectory(f"{option} {path}: directory {parent} does not exist; create it first")


def describe(e: BaseException) -> tuple[str, int | None]:
    """(message, exit code) for an expected failure; code None for a bug.

    A ``LocalError`` carries its own ``exit_code`` (1 unless it says
    otherwise: ``ConfigError`` 2, ``KeyFileError`` and ``BundleError`` 3);
    a missing file is a usage error (2), a file we may not read a security
    refusal (3), any other I/O failure or a broken link a failure (1).
    """
    if isinstance(e, LocalError):
        return str(e), int(getattr(e, "exit_code", 1))
    if isinstance(e, FileExistsError):
        return f"{e.filename}: already exists; refusing to overwrite it", 2
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return f"{e.filename or ''}: {e.strerror or e}", 2
    if isinstance(e, PermissionError):
        return f"{e.filename or ''}: {e.strerror or e}", 3
    if isinstance(e, OSError):  # includes the links' LinkError
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}", 1
    if isinstance(e, sqlite3.Error):  # e.g. locked past the timeout, disk full
        return f"registry: {e}", 1
    if isinstance(e, UnicodeDecodeError):
        return f"not a text file ({e.reason})", 2
    return str(e), None


def fail(message: str, code: int, as_json: bool) -> NoReturn:
    """Print ``message`` as moteseal's one-line error and exit ``code``."""
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code}))
    click.echo(f"moteseal: error: {message}", err=True)
    sys.exit(code)


def stop_event(seconds: float | None = None) -> "threading.Event":
    """The stop signal of a long-running command (``hub run``, ``peer
    listen``, ``device simulate``): set by SIGINT or SIGTERM, and after
    ``seconds`` if given."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    return stop

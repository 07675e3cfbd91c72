"""A real PostgreSQL server for the tests: Debian's binaries
(/usr/lib/postgresql/<version>/bin, not on PATH) in a temporary data
directory, listening on a free 127.0.0.1 port and on a unix socket inside
that directory, password authentication (scram) for one role. Started once
per test session, stopped and deleted at the end; each test gets a fresh
database.

initdb and postgres refuse to run as root, so when the tests run as root
(CI's `make setup` then `make test` may) the server runs as the `postgres`
system user that Debian's package creates, through `runuser`; the data
directory is created for that user. The password travels in a file
(initdb --pwfile) and in the DSN handed to the code under test, never in
argv.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gateway.broker import free_port

APT_HINT = "PostgreSQL is not installed: sudo apt-get install postgresql (scripts/setup.sh does)"
ROLE = "moteseal"


def pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin directory, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    return None


class PgServer:
    """One PostgreSQL server in a temporary directory. Not thread-safe:
    started and stopped by the fixture."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="moteseal-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.proc: subprocess.Popen | None = None
        self._as: list[str] = []
        if os.getuid() == 0:
            # initdb: "cannot be run as root"; Debian's package made this user.
            try:
                import pwd
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        r = subprocess.run(self._as + list(argv), capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{argv[0]} failed: {r.stderr.strip()[-2000:]}")

    def start(self) -> "PgServer":
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if self._as:
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "--pwfile", str(pwfile),
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions", "--no-sync")
        pwfile.unlink()
        log = open(self.root / "server.log", "w")
        if self._as:
            shutil.chown(self.root / "server.log", "postgres")
        self.proc = subprocess.Popen(
            self._as + [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                        "-c", "fsync=off", "-c", "max_connections=100", "-c", "shared_buffers=16MB"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                import psycopg
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (self.root / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        return self

    def dsn(self, db: str) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; returns its DSN."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: smart shutdown; fast shutdown follows on SIGINT
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for the session (skips with the apt command if absent)."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(APT_HINT)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]'")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of a fresh, empty database on the session's server."""
    return pg_server.new_database()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Callable[[], str]:
    """Factory for further fresh databases."""
    return pg_server.new_database

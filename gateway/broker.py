"""Mosquitto accounts, ACLs and local brokers for moteseal (CPython only).

Invariants:
- An account name is a moteseal id (1..16 ASCII ``[A-Za-z0-9._-]``), so it
  can never contain an MQTT wildcard or a topic separator.
- The ACL file is made of one block per account (``user <name>`` followed by
  its ``topic`` lines). A device block grants exactly ``write`` on its own up
  topic and ``read`` on its own down topic; a gateway block grants ``read`` on
  every up topic, ``write`` on every down topic and ``readwrite`` on the
  gateways' heartbeat topics ``moteseal/v1/gw/+`` (no other role may write
  one: a fake heartbeat would take shards and drop them); a monitor block grants
  ``read`` on everything under ``moteseal/``. An account without a block gets
  nothing (Mosquitto denies by default once an ACL file is set).
- Group topics (fleet broadcast, ``moteseal/v1/group/<gid>``): a hub block
  is a device block plus ``write`` on every group topic, and no other role
  may write one; a device block grants ``read`` on exactly the group topics
  listed for it (``set_acl_groups``), and nothing else there.
- Files are replaced atomically (write to a temporary file, then rename), so a
  reload never sees half a file.
- No password ever appears in a process's argv: ``mosquitto_passwd`` gets
  it on stdin (the gateway package holds no crypto, so hashing stays
  Mosquitto's), and removing an entry rewrites the file here.
- ``LocalBroker`` owns the one Mosquitto process it starts and stops it
  (terminate, then kill) however the caller leaves.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

__all__ = [
    "BrokerError",
    "ROLES",
    "UP_PREFIX",
    "DOWN_PREFIX",
    "check_id",
    "acl_block",
    "read_acl",
    "set_acl_account",
    "set_acl_groups",
    "acl_groups",
    "remove_acl_account",
    "set_password",
    "remove_password",
    "reload_broker",
    "config_template",
    "render_config",
    "find_mosquitto",
    "free_port",
    "LocalBroker",
]

UP_PREFIX = "moteseal/v1/up/"
DOWN_PREFIX = "moteseal/v1/down/"
GROUP_PREFIX = "moteseal/v1/group/"
GATEWAY_PREFIX = "moteseal/v1/gw/"  # heartbeats, gateway.membership (shard = "auto")
ROLES = ("device", "gateway", "monitor", "hub")

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,16}\Z")
_ACL_HEADER = [
    "# moteseal ACL, managed by `moteseal broker add-device / remove-device`.",
    "# One block per account; an account without a block may do nothing.",
    "",
]


class BrokerError(Exception):
    """A broker file or process could not be managed (message says which)."""


def check_id(name: str) -> str:
    """Return ``name`` if it is a valid moteseal id; raise ``BrokerError``."""
    if not _ID_RE.match(name):
        raise BrokerError(
            f"invalid id {name!r}: 1 to 16 characters from A-Z a-z 0-9 . _ -")
    return name


def acl_block(user: str, role: str, groups: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The ACL lines for one account; a device reads the topics of
    ``groups``. Raises ``BrokerError`` for a bad role or id."""
    check_id(user)
    if groups and role != "device":
        raise BrokerError("only a device account reads group topics")
    if role in ("device", "hub"):
        topics = [f"topic write {UP_PREFIX}{user}", f"topic read {DOWN_PREFIX}{user}"]
        topics += [f"topic read {GROUP_PREFIX}{check_id(g)}" for g in groups]
        if role == "hub":
            topics.append(f"topic write {GROUP_PREFIX}+")
    elif role == "gateway":
        topics = [f"topic read {UP_PREFIX}+", f"topic write {DOWN_PREFIX}+",
                  f"topic readwrite {GATEWAY_PREFIX}+"]
    elif role == "monitor":
        topics = ["topic read moteseal/#"]
    else:
        raise BrokerError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return [f"# {role}", f"user {user}", *topics, ""]


def read_acl(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Split an ACL file into its header lines and one block per user.

    A comment line directly above a ``user`` line belongs to that block.
    A missing file reads as an empty header and no blocks.
    """
    if not path.exists():
        return list(_ACL_HEADER), {}
    header: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    pending: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("user "):
            name = stripped[5:].strip()
            current = blocks.setdefault(name, [])
            current.extend(pending)
            current.append(line)
            pending = []
        elif stripped.startswith("#"):
            pending.append(line)
        elif current is None:
            header.extend(pending)
            pending = []
            header.append(line)
        else:
            current.extend(pending)
            pending = []
            current.append(line)
    if current is None:
        header.extend(pending)
    else:
        current.extend(pending)
    return header, blocks


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_acl(path: Path, header: list[str], blocks: dict[str, list[str]]) -> None:
    lines = list(header)
    for block in blocks.values():
        lines.extend(block)
        if block and block[-1].strip():
            lines.append("")
    _write_atomic(path, "\n".join(lines).rstrip("\n") + "\n")


def set_acl_account(path: Path, user: str, role: str) -> None:
    """Add or replace ``user``'s block in the ACL file at ``path``.

    Raises ``BrokerError`` for a bad id or role.
    """
    block = acl_block(user, role)
    header, blocks = read_acl(path)
    blocks[user] = block
    _write_acl(path, header, blocks)


def acl_groups(path: Path, user: str) -> tuple[str | None, list[str]]:
    """``(role, groups)`` of ``user``'s block (``(None, [])`` if none)."""
    _header, blocks = read_acl(path)
    block = blocks.get(user)
    if block is None:
        return None, []
    role = next((ln.strip()[2:] for ln in block if ln.strip()[2:] in ROLES
                 and ln.strip().startswith("# ")), None)
    pre = f"topic read {GROUP_PREFIX}"
    return role, [ln.strip()[len(pre):] for ln in block if ln.strip().startswith(pre)]


def set_acl_groups(path: Path, user: str, groups: list[str] | tuple[str, ...]) -> None:
    """Replaces the group topics device ``user`` may read with ``groups``.
    Raises ``BrokerError`` if ``user`` has no device block or an id is bad."""
    role, _old = acl_groups(path, user)
    if role != "device":
        raise BrokerError(f"{user} has no device account in {path} (moteseal broker add-device)")
    header, blocks = read_acl(path)
    blocks[user] = acl_block(user, "device", sorted(set(groups)))
    _write_acl(path, header, blocks)


def remove_acl_account(path: Path, user: str) -> bool:
    """Remove ``user``'s block; return whether there was one."""
    header, blocks = read_acl(path)
    if blocks.pop(user, None) is None:
        return False
    _write_acl(path, header, blocks)
    return True


def _mosquitto_passwd() -> str:
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.path.exists(exe):
        raise BrokerError("mosquitto_passwd not found; install mosquitto (make setup)")
    return exe


def _password_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def set_password(path: Path, user: str, password: str) -> None:
    """Set ``user``'s password in the Mosquitto password file at ``path``
    (created 0600 if missing; other entries kept). The password goes to
    ``mosquitto_passwd`` on its stdin (it prompts twice), never in argv.
    Raises ``BrokerError``."""
    check_id(user)
    if not password or any(ch in password for ch in "\r\n\0"):
        raise BrokerError(f"password for {user}: must be non-empty, without line breaks or NUL")
    if not path.exists():
        _write_atomic(path, "")
    result = subprocess.run(
        [_mosquitto_passwd(), str(path), user], input=f"{password}\n{password}\n",
        capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise BrokerError(f"mosquitto_passwd failed for {path}: {result.stderr.strip()}")
    os.chmod(path, 0o600)


def remove_password(path: Path, user: str) -> bool:
    """Delete ``user`` from the password file; return whether it was there."""
    lines = _password_lines(path)
    kept = [ln for ln in lines if ln.split(":", 1)[0] != user]
    if len(kept) == len(lines):
        return False
    _write_atomic(path, "".join(ln + "\n" for ln in kept))
    return True


def reload_broker(pid_file: Path) -> bool:
    """Send SIGHUP to the Mosquitto whose pid is in ``pid_file`` so that it
    re-reads its password and ACL files. Returns False if no broker runs
    there (no file, or a stale pid)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise BrokerError(f"cannot signal Mosquitto pid {pid} from {pid_file}: {exc}") from exc
    return True


def config_template(name: str) -> str:
    """The text of ``broker_config/<name>`` (``mosquitto.conf`` or ``local.conf``)."""
    return resources.files("broker_config").joinpath(name).read_text()


def render_config(template: str, *, port: int, workdir: Path, auth: bool = True,
                  extra: list[str] | None = None,
                  overrides: dict[str, str] | None = None) -> str:
    """Rewrite a moteseal Mosquitto config for a scratch broker.

    Keeps every setting of ``template`` except: the loopback listener's port
    becomes ``port``; the password, ACL, pid and persistence paths move into
    ``workdir``; other listeners (TLS) and their options are dropped; with
    ``auth=False`` the broker takes anonymous clients without an ACL (and
    without ``use_username_as_clientid``, which needs a username); each
    ``overrides`` key replaces that setting's value (tests use it to lift a
    limit). When run as root the broker keeps its user so that it can read
    ``workdir``.
    """
    overrides = dict(overrides or {})
    out: list[str] = []
    skip_listener = False
    for line in template.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key == "listener":
            skip_listener = not (len(words) == 3 and words[2] in ("127.0.0.1", "localhost"))
            if not skip_listener:
                out.append(f"listener {port} 127.0.0.1")
            continue
        if skip_listener and key:
            continue
        if key in overrides:
            out.append(f"{key} {overrides.pop(key)}")
        elif key == "use_username_as_clientid" and not auth:
            continue
        elif key == "password_file":
            if auth:
                out.append(f"password_file {workdir / 'passwd'}")
        elif key == "acl_file":
            if auth:
                out.append(f"acl_file {workdir / 'acl'}")
        elif key == "allow_anonymous":
            out.append(f"allow_anonymous {'false' if auth else 'true'}")
        elif key == "persistence_location":
            out.append(f"persistence_location {workdir}/")
        elif key == "pid_file":
            out.append(f"pid_file {workdir / 'mosquitto.pid'}")
        elif key in ("user", "log_dest"):
            continue
        else:
            out.append(line)
    out.extend(f"{k} {v}" for k, v in overrides.items())
    out.append("log_dest stderr")
    if os.geteuid() == 0:
        out.append("user root")
    out.extend(extra or [])
    return "\n".join(out) + "\n"


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary; raises ``BrokerError`` if absent."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise BrokerError("mosquitto not found; install it with `make setup` (apt-get install mosquitto)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """A Mosquitto on a free loopback port with a config rendered from
    ``broker_config/local.conf`` into ``workdir``.

    Use as a context manager, or call ``start()`` and ``stop()``. ``add()``
    creates accounts (password and ACL block) and reloads a running broker.
    Not for sharing between threads: one thread starts, changes and stops it.
    """

    def __init__(self, workdir: Path, *, auth: bool = True, port: int | None = None,
                 extra: list[str] | None = None,
                 overrides: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.auth = auth
        self.port = port or 0
        self.host = "127.0.0.1"
        self.extra = list(extra or [])
        self.overrides = dict(overrides or {})
        self.passwords: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def passwd_file(self) -> Path:
        return self.workdir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.workdir / "acl"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "mosquitto.pid"

    @property
    def conf_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def add(self, user: str, role: str = "device", password: str | None = None) -> str:
        """Create or update an account; return its password."""
        password = password or secrets.token_urlsafe(18)
        set_password(self.passwd_file, user, password)
        set_acl_account(self.acl_file, user, role)
        self.passwords[user] = password
        if self.proc is not None and self.proc.poll() is None:
            reload_broker(self.pid_file)
        return password

    def set_groups(self, user: str, groups: list[str]) -> None:
        """The group topics device ``user`` may read (``set_acl_groups``)."""
        set_acl_groups(self.acl_file, user, groups)
        if self.proc is not None and self.proc.poll() is None:
            reload_broker(self.pid_file)

    def start(self, timeout: float = 10.0) -> "LocalBroker":
        """Start Mosquitto and wait until it accepts connections.

        Retries on another port if the chosen one was taken meanwhile.
        Raises ``BrokerError`` if it does not come up.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.auth:
            if not self.passwd_file.exists():
                _write_atomic(self.passwd_file, "")
            if not self.acl_file.exists():
                _write_acl(self.acl_file, list(_ACL_HEADER), {})
        fixed = bool(self.port)
        for _attempt in range(5):
            if not fixed:
                self.port = free_port()
            text = render_config(config_template("local.conf"), port=self.port,
                                 workdir=self.workdir, auth=self.auth, extra=self.extra,
                                 overrides=self.overrides)
            self.conf_file.write_text(text)
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [find_mosquitto(), "-c", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir)
            finally:
                log.close()
            # Mosquitto writes its pid file only when it daemonises; write it
            # here so that `moteseal broker` can reload this broker too.
            self.pid_file.write_text(f"{self.proc.pid}\n")
            if self._wait_ready(timeout):
                return self
            self.stop()
            if fixed:
                break
        raise BrokerError(f"mosquitto did not start; see {self.log_path}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        try:
            self.pid_file.unlink()
        except FileNotFoundError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

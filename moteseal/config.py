"""Configuration for the key and provisioning commands (CPython only).

A TOML file, then environment overrides, then command-line options (which
the CLI applies last). Every value is checked against ``SCHEMA``; an error
names the file (or the environment variable) and the ``[section] key`` that
is wrong, because a bad config found at 3 a.m. must say where to look.

Invariants:
- Unknown sections and keys are errors, not ignored: a typo in a key name
  would otherwise silently fall back to a default.
- The environment override for ``[section] key`` is ``MOTESEAL_SECTION_KEY``
  (upper case), e.g. ``MOTESEAL_LINK_PORT=8883``.
- Relative paths in the file (``[registry] dir``, ``[provision] out_dir``)
  are relative to the file's directory; in the environment or on the
  command line, to the working directory.
- File search order: ``--config PATH``, then ``$MOTESEAL_CONFIG``, then
  ``$XDG_CONFIG_HOME/moteseal/config.toml`` (``~/.config/...``) if it exists;
  otherwise built-in defaults only. A file named explicitly must exist.

Example ``config.toml``::

    [registry]
    dir = "/var/lib/moteseal"        # registries at <dir>/<peer-id>.sqlite
    peer = "hub1"                    # default --peer

    [keys]
    kdf = "moderate"                 # argon2id cost for --passphrase key files

    [provision]
    suite = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    out_dir = "bundles"

    [link]
    kind = "mqtt"                    # or "serial"
    host = "mqtt.example.net"
    port = 8883
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

from device.errors import LocalError
from device.noise import DEFAULT_SUITE
from device.session import SESSION_SUITES as SUITES  # the core's list of session suites is the truth

KDF_LEVELS = ("interactive", "moderate", "sensitive")


class ConfigError(LocalError):
    """A configuration value is missing, unknown or of the wrong type.

    The message names the file or environment variable and the key. The CLI
    exits 2 (usage error).
    """

    exit_code = 2


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "moteseal")


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError("expected an integer 1..65535")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError("expected a positive integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError("expected one of " + ", ".join(repr(c) for c in choices))
        return v

    return check


# section -> key -> (validator, default). A default of None means "unset".
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "registry": {
        "dir": (_str, None),  # resolved lazily: $XDG_DATA_HOME/moteseal
        "peer": (_str, None),  # default --peer for provision/registry/rotate
    },
    "keys": {
        "kdf": (_one_of(KDF_LEVELS), "moderate"),
    },
    "provision": {
        "suite": (_one_of(SUITES), DEFAULT_SUITE),
        "out_dir": (_str, "."),
    },
    "peer": {
        # `peer listen`: a session older than this (seconds) must handshake again
        "max_session_age": (_positive_int, 86400),
    },
    "link": {
        "kind": (_one_of(("mqtt", "serial", "none")), "mqtt"),
        "host": (_str, "127.0.0.1"),
        "port": (_port, 1883),
        "username": (_str, None),
        "password": (_str, None),
        "serial_port": (_str, None),
        "baud": (_positive_int, 115200),
    },
}


# Paths in a config file are relative to the file's directory.
_PATH_KEYS = {("registry", "dir"), ("provision", "out_dir")}


def env_name(section: str, key: str) -> str:
    return "MOTESEAL_" + section.upper() + "_" + key.upper()


def _from_env(raw: str, validator: Callable[[Any], Any]) -> Any:
    # Environment values are strings; integers are the only other type here.
    if validator in (_port, _positive_int):
        try:
            return int(raw, 10)
        except ValueError:
            return raw
    return raw


class Config:
    """Checked configuration values, read with ``cfg.get("link", "port")``.

    ``source(section, key)`` says where a value came from (file path,
    environment variable or ``"default"``), for error messages and
    ``--json`` output.
    """

    def __init__(self, values: dict[str, dict[str, Any]], sources: dict[tuple[str, str], str], path: Path | None):
        self._values = values
        self._sources = sources
        self.path = path

    def get(self, section: str, key: str) -> Any:
        if section == "registry" and key == "dir" and self._values[section][key] is None:
            return _default_data_dir()
        return self._values[section][key]

    def source(self, section: str, key: str) -> str:
        return self._sources.get((section, key), "default")

    def registry_path(self, peer_id: str) -> Path:
        """The default SQLite registry of ``peer_id``: ``<registry.dir>/<peer_id>.sqlite``."""
        return Path(os.path.expanduser(self.get("registry", "dir"))) / (peer_id + ".sqlite")


def _default_path(env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """(path, must_exist) for the config file when ``--config`` is absent."""
    if env.get("MOTESEAL_CONFIG"):
        return Path(env["MOTESEAL_CONFIG"]), True
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "moteseal" / "config.toml", False


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file, apply ``MOTESEAL_SECTION_KEY`` overrides, check all.

    Raises ``ConfigError`` naming the file or variable and the key for an
    unreadable or malformed file, an unknown section or key, or a bad value.
    """
    env = os.environ if env is None else env
    if path is not None:
        cfg_path: Path | None = Path(path)
        must_exist = True
    else:
        cfg_path, must_exist = _default_path(env)
    data: dict[str, Any] = {}
    if cfg_path is not None and (must_exist or cfg_path.exists()):
        try:
            with open(cfg_path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{cfg_path}: cannot read config file: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{cfg_path}: not valid TOML: {e}") from None
    else:
        cfg_path = None

    values: dict[str, dict[str, Any]] = {s: {k: d for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()}
    sources: dict[tuple[str, str], str] = {}
    for section, table in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{cfg_path}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{cfg_path}: {section} must be a table [{section}]")
        for key, value in table.items():
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"{cfg_path}: [{section}] {key}: unknown key (known: {', '.join(SCHEMA[section])})"
                )
            validator = SCHEMA[section][key][0]
            try:
                values[section][key] = validator(value)
                if (section, key) in _PATH_KEYS:
                    # Relative to the config file, not to wherever a service starts.
                    values[section][key] = str(cfg_path.parent / os.path.expanduser(value))
            except ValueError as e:
                shown = "(hidden)" if key == "password" else repr(value)
                raise ConfigError(f"{cfg_path}: [{section}] {key}: {e}, got {shown}") from None
            sources[(section, key)] = str(cfg_path)

    for section, keys in SCHEMA.items():
        for key, (validator, _) in keys.items():
            name = env_name(section, key)
            if name in env:
                raw = env[name]
                try:
                    values[section][key] = validator(_from_env(raw, validator))
                except ValueError as e:
                    shown = "(hidden)" if key == "password" else repr(raw)
                    raise ConfigError(f"environment {name} ([{section}] {key}): {e}, got {shown}") from None
                sources[(section, key)] = "environment " + name
    return Config(values, sources, cfg_path)

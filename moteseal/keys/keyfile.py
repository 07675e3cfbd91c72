"""Peer static key files: generate, write, read, encrypt at rest (CPython only).

A key file holds one X25519 key pair as a CBOR map (RFC 8949)::

    key-file = {
      "format": "moteseal-key",
      "v": 1,
      "pub": bstr .size 32,           ; the public key, always in clear
      ? "priv": bstr .size 32,        ; plain file
      ? "kdf": "argon2id13",          ; encrypted file: these four instead
      ? "ops": uint, ? "mem": uint,   ; argon2id opslimit / memlimit (bytes)
      ? "salt": bstr .size 16,
      ? "box": bstr .size 72,         ; SecretBox(nonce 24 || XSalsa20-Poly1305(priv) 48)
    }

A public key file is one line of text: ``moteseal-pub v1 x25519 <64 hex>``.

Invariants:
- A key file is created 0600 (never briefly wider) and never replaces an
  existing file unless the caller asks (``overwrite=True``); the write is
  atomic (temp file, fsync, link/rename), so a crash leaves the old key or
  the new one, never half of either.
- A key file that group or others may access (any of mode 0o077) is refused
  before it is parsed, as OpenSSH refuses a private key that is too open.
- Private scalars are stored clamped (RFC 7748 section 5), and every load
  checks that and that ``pub`` is the public key of the private key, so a
  flipped bit anywhere in ``pub`` or ``priv`` is an error, not a silent key
  change. For encrypted files the Poly1305 tag covers ``priv`` and the
  argon2id key covers ``salt``, ``ops`` and ``mem``.
- Every KDF parameter read from a file is bounded before any derivation
  (``KDF_OPS_MAX``, ``KDF_MEM_MAX``: our costliest profile, "sensitive"),
  so a tampered file can neither allocate without limit nor keep a process
  deriving for minutes; it is refused (exit 3) at once.
- Failures raise ``KeyFileError`` (or a subclass) with the file name and what
  to do; nothing here prints or logs key bytes or passphrases.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import cbor2
import nacl.exceptions
import nacl.public
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from device.errors import LocalError

KEY_BYTES = 32
SALT_BYTES = argon2id.SALTBYTES  # 16
BOX_BYTES = nacl.secret.SecretBox.NONCE_SIZE + KEY_BYTES + nacl.secret.SecretBox.MACBYTES  # 24 + 32 + 16
# A key file is a handful of fields; anything larger is not one of ours.
MAX_KEY_FILE_BYTES = 4096

KDF_COSTS = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
# Bounds on the argon2id cost read from a file: nothing we write costs more
# than the "sensitive" profile (4 passes over 1 GiB, a few seconds).
KDF_OPS_MIN, KDF_OPS_MAX = argon2id.OPSLIMIT_MIN, argon2id.OPSLIMIT_SENSITIVE  # 1, 4
KDF_MEM_MIN, KDF_MEM_MAX = argon2id.MEMLIMIT_MIN, argon2id.MEMLIMIT_SENSITIVE  # 8 KiB, 1 GiB
PASSPHRASE_ENV = "MOTESEAL_PASSPHRASE"
# A file holding the passphrase instead (first line): a systemd credential,
# %d/passphrase in the unit `moteseal service install` writes.
PASSPHRASE_FILE_ENV = "MOTESEAL_PASSPHRASE_FILE"
PUB_PREFIX = "moteseal-pub v1 x25519 "


class KeyFileError(LocalError):
    """A key, public key or bundle file cannot be used: missing fields,
    corrupted, truncated, wrong type, or a public key that does not match
    its private key. The CLI exits 3 (security refusal)."""

    exit_code = 3


class KeyPermissionError(KeyFileError):
    """A secret file is readable or writable by group or others."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not open the encrypted key file (or the file's
    ciphertext was altered: the two cannot be told apart)."""


class PassphraseRequired(KeyFileError):
    """The key file is encrypted and no passphrase was supplied (a usage
    error: the CLI exits 2)."""

    exit_code = 2


class KeyPair:
    """An X25519 static key pair. ``repr`` never shows the private key."""

    __slots__ = ("priv", "pub")

    def __init__(self, priv: bytes, pub: bytes):
        self.priv = priv
        self.pub = pub

    def __repr__(self) -> str:
        return f"KeyPair(pub={self.pub.hex()})"


def _clamp(priv: bytes) -> bytes:
    # RFC 7748 section 5 decodeScalar25519. X25519 ignores these bits, so a
    # stored key is kept clamped: then every bit of it matters, and a flipped
    # bit shows up as a public key mismatch or an unclamped key on load.
    b = bytearray(priv)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from libsodium's CSPRNG (scalar stored clamped)."""
    priv = _clamp(nacl.utils.random(KEY_BYTES))
    return KeyPair(priv, public_of(priv))


def public_of(priv: bytes) -> bytes:
    return bytes(nacl.public.PrivateKey(priv).public_key)


def normalize_passphrase(passphrase: str | bytes) -> bytes:
    """UTF-8 of the NFC form, so the same passphrase typed on two terminals
    derives the same key."""
    if isinstance(passphrase, bytes):
        return passphrase
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def passphrase_from_env() -> bytes | None:
    """$MOTESEAL_PASSPHRASE, else the first line of the file named by
    $MOTESEAL_PASSPHRASE_FILE, else None.

    The file's mode is not checked: systemd hands a credential to a service
    user through an ACL, which shows as group read in the mode bits.
    Raises ``PassphraseRequired`` (exit 2) if the file is missing or empty.
    """
    v = os.environ.get(PASSPHRASE_ENV)
    if v:
        return normalize_passphrase(v)
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PassphraseRequired(f"${PASSPHRASE_FILE_ENV} {path}: no such file") from None
    if not lines or not lines[0]:
        raise PassphraseRequired(f"${PASSPHRASE_FILE_ENV} {path}: the file is empty")
    return normalize_passphrase(lines[0])


# ---------------------------------------------------------------- files


def check_private_mode(path: str | os.PathLike[str]) -> None:
    """Raise ``KeyPermissionError`` if group or others have any access.

    Raises ``FileNotFoundError`` if there is no such file.
    """
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"{path}: permissions {mode:04o} are too open (group or others can access this secret); "
            f"refusing to use it. Fix with: chmod 600 {path}"
        )


def write_private_file(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> None:
    """Atomically write ``data`` to a new 0600 file.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{nacl.utils.random(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() refuses an existing target: no window in which a key
            # that appeared meanwhile is replaced.
            os.link(tmp, path)
        _fsync_dir(path.parent)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_private_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Read a secret file after checking its mode; at most ``limit`` bytes.

    Raises ``FileNotFoundError``, ``KeyPermissionError`` or ``KeyFileError``
    (too large).
    """
    check_private_mode(path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise KeyFileError(f"{path}: larger than {limit} bytes; not a moteseal file")
    return data


# ---------------------------------------------------------------- codec


def encode_key_file(kp: KeyPair, passphrase: bytes | None = None, kdf: str = "moderate") -> bytes:
    """The CBOR key file for ``kp``, encrypted if ``passphrase`` is given."""
    doc: dict[str, Any] = {"format": "moteseal-key", "v": 1, "pub": kp.pub}
    if passphrase is None:
        doc["priv"] = kp.priv
    else:
        ops, mem = KDF_COSTS[kdf]
        salt = nacl.utils.random(SALT_BYTES)
        key = argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops, memlimit=mem)
        doc.update({"kdf": "argon2id13", "ops": ops, "mem": mem, "salt": salt})
        doc["box"] = bytes(nacl.secret.SecretBox(key).encrypt(kp.priv))
    return cbor2.dumps(doc, canonical=True)


def _decode_map(data: bytes, source: str, fmt: str) -> dict[str, Any]:
    try:
        doc = cbor2.loads(data)
    except Exception:  # cbor2 raises several types for truncated/garbled input
        raise KeyFileError(f"{source}: not a {fmt} file (truncated or corrupted CBOR)") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise KeyFileError(f"{source}: not a {fmt} file")
    if not all(type(k) is str and type(v) in (int, bytes, str) for k, v in doc.items()):
        # Key files are flat; and canonical re-encoding of nested maps costs
        # cbor2 time exponential in their depth, so it never sees them.
        raise KeyFileError(f"{source}: not a {fmt} file (nested or non-text fields)")
    if cbor2.dumps(doc, canonical=True) != bytes(data):
        # We write canonical CBOR and nothing after it: anything else (bytes
        # appended, a re-encoded field) was not written by moteseal.
        raise KeyFileError(f"{source}: not a {fmt} file (trailing or non-canonical bytes)")
    if doc.get("v") != 1:
        raise KeyFileError(f"{source}: unsupported {fmt} version {doc.get('v')!r} (this moteseal reads 1)")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type, source: str, size: int | None = None) -> Any:
    v = doc.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) or (size is not None and len(v) != size):
        want = f"{size}-byte string" if size is not None else kind.__name__
        raise KeyFileError(f"{source}: field {name!r} missing or not a {want} (corrupted file)")
    return v


def is_encrypted(data: bytes, source: str = "key file") -> bool:
    return "box" in _decode_map(data, source, "moteseal-key")


def public_from_key_file(data: bytes, source: str = "key file") -> bytes:
    """The ``pub`` field of a key file, without the passphrase.

    For an encrypted file this value is checked against the private key only
    when the file is opened with its passphrase.
    """
    return _field(_decode_map(data, source, "moteseal-key"), "pub", bytes, source, KEY_BYTES)


def decode_key_file(data: bytes, passphrase: bytes | None, source: str = "key file") -> KeyPair:
    """Parse and check a key file.

    Raises ``PassphraseRequired`` (encrypted, no passphrase),
    ``WrongPassphrase`` (tag check failed) or ``KeyFileError`` (anything
    else: truncated, corrupted, wrong format or version, mismatched pub).
    """
    doc = _decode_map(data, source, "moteseal-key")
    pub = _field(doc, "pub", bytes, source, KEY_BYTES)
    if "box" in doc:
        if doc.get("kdf") != "argon2id13":
            raise KeyFileError(f"{source}: unknown key derivation {doc.get('kdf')!r}")
        ops = _field(doc, "ops", int, source)
        mem = _field(doc, "mem", int, source)
        salt = _field(doc, "salt", bytes, source, SALT_BYTES)
        box = _field(doc, "box", bytes, source, BOX_BYTES)
        if not (KDF_OPS_MIN <= ops <= KDF_OPS_MAX) or not (KDF_MEM_MIN <= mem <= KDF_MEM_MAX):
            raise KeyFileError(
                f"{source}: argon2id cost out of range (ops {KDF_OPS_MIN}..{KDF_OPS_MAX}, "
                f"mem {KDF_MEM_MIN}..{KDF_MEM_MAX} bytes): corrupted or tampered file")
        if passphrase is None:
            raise PassphraseRequired(
                f"{source}: the key file is encrypted; pass --passphrase to be prompted "
                f"or set {PASSPHRASE_ENV}"
            )
        key = argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops, memlimit=mem)
        try:
            priv = nacl.secret.SecretBox(key).decrypt(box)
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase(f"{source}: wrong passphrase, or the encrypted key was altered") from None
    else:
        priv = _field(doc, "priv", bytes, source, KEY_BYTES)
    if _clamp(priv) != priv or public_of(priv) != pub:
        raise KeyFileError(f"{source}: the public key does not match the private key (corrupted or edited file)")
    return KeyPair(priv, pub)


# ---------------------------------------------------------------- API


def write_key_file(
    path: str | os.PathLike[str],
    kp: KeyPair,
    passphrase: bytes | None = None,
    kdf: str = "moderate",
    overwrite: bool = False,
) -> None:
    """Write ``kp`` to ``path`` (0600, atomic). Raises ``FileExistsError``."""
    write_private_file(path, encode_key_file(kp, passphrase, kdf), overwrite)


def read_key_file(path: str | os.PathLike[str], passphrase: bytes | None = None) -> KeyPair:
    """Load a key pair; ``passphrase`` defaults to ``$MOTESEAL_PASSPHRASE``.

    Raises ``FileNotFoundError``, ``KeyPermissionError``,
    ``PassphraseRequired``, ``WrongPassphrase`` or ``KeyFileError``.
    """
    data = read_private_file(path, MAX_KEY_FILE_BYTES)
    if passphrase is None:
        passphrase = passphrase_from_env()
    return decode_key_file(data, passphrase, str(path))


def format_public(pub: bytes) -> str:
    return PUB_PREFIX + pub.hex() + "\n"


def parse_public(text: str, source: str = "public key file") -> bytes:
    """Raises ``KeyFileError`` unless ``text`` is one ``moteseal-pub`` line."""
    line = text.strip()
    if not line.startswith(PUB_PREFIX):
        raise KeyFileError(f"{source}: not a moteseal public key file (expected '{PUB_PREFIX}<64 hex>')")
    hexpart = line[len(PUB_PREFIX) :]
    try:
        pub = bytes.fromhex(hexpart)
    except ValueError:
        pub = b""
    if len(pub) != KEY_BYTES or len(hexpart) != 2 * KEY_BYTES:
        raise KeyFileError(f"{source}: public key is not 64 hex digits (truncated or corrupted)")
    return pub


def write_public_file(path: str | os.PathLike[str], pub: bytes, overwrite: bool = False) -> None:
    """Write the public key as text, mode 0644. Raises ``FileExistsError``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(format_public(pub))


def read_public_any(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The public key in a ``.pub`` file or a key file, and which it was
    (``"pub"`` or ``"key"``). A key file is mode-checked like any secret.

    Raises ``FileNotFoundError`` or ``KeyFileError``.
    """
    with open(path, "rb") as f:
        head = f.read(len(PUB_PREFIX))
    if head == PUB_PREFIX.encode():
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{path}: not a moteseal public key file (non-ASCII bytes)") from None
        return parse_public(text, str(path)), "pub"
    data = read_private_file(path, MAX_KEY_FILE_BYTES)
    return public_from_key_file(data, str(path)), "key"

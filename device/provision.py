"""Device bundles: what a device is flashed with (CPython only).

``provision_device`` draws a fresh PSK, records the device in its peer's
registry (pinning every key the peer answers on) and returns the bundle.
The bundle is one CBOR map (RFC 8949, canonical encoding)::

    bundle = {
      "format": "moteseal-bundle",
      "v": 1,
      "device": id,                      ; bstr .size (1..16), [A-Za-z0-9._-]
      "generation": uint,                ; 1, then +1 per re-provisioning
      "peers": [+ {"id": id, "keys": [+ bstr .size 32]}],  ; keys newest first
      "psk": bstr .size 32,
      "suite": tstr,                     ; e.g. "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
      "link": link,
      "check": bstr .size 16,            ; SHA-256(canonical CBOR of the map without "check")[:16]
    }
    link = {"kind": "mqtt", ? "host": tstr, ? "port": uint, ? "username": tstr, ? "password": tstr}
         / {"kind": "serial", ? "port": tstr, ? "baud": uint}
         / {"kind": "none"}

Invariants:
- A bundle file is written 0600 and refused when group or others may read
  it: it holds the PSK and the link password.
- ``check`` catches truncation, corruption and hand edits. It is a checksum,
  not a signature: whoever can read a bundle holds its PSK anyway, so the
  file's protection is its permissions and the flashing path.
- Decoding checks every field's type and size and rejects unknown fields,
  versions and suites; a bad bundle raises ``BundleError``, never anything
  else. Limit: ``MAX_BUNDLE_BYTES`` (a bundle with two peers and two keys
  each is about 400 bytes; 4 KiB leaves room without reading a huge file).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import cbor2
import nacl.utils

from device.config import SUITES
from device.keys import KeyFileError, read_private_file, write_private_file
from device.registry import PSK_BYTES, DeviceRecord, Registry, parse_id

BUNDLE_VERSION = 1
CHECK_BYTES = 16
MAX_BUNDLE_BYTES = 4096
_FIELDS = {"format", "v", "device", "generation", "peers", "psk", "suite", "link", "check"}
_LINK_FIELDS = {
    "mqtt": {"kind": str, "host": str, "port": int, "username": str, "password": str},
    "serial": {"kind": str, "port": str, "baud": int},
    "none": {"kind": str},
}


class BundleError(KeyFileError):
    """A bundle is truncated, corrupted, edited, of an unknown version, or
    malformed. The CLI exits 3."""


class Bundle:
    """A decoded bundle: what ``device.session.DeviceSession`` needs.

    ``peer_id`` and ``peer_keys`` are the first peer's; ``peers`` lists all
    ``(peer_id, [pub, ...])``. ``repr`` never shows the PSK or password.
    """

    def __init__(
        self,
        device_id: bytes,
        peers: list[tuple[bytes, list[bytes]]],
        psk: bytes,
        suite: str,
        link: dict[str, Any],
        generation: int = 1,
    ):
        self.device_id = device_id
        self.peers = peers
        self.psk = psk
        self.suite = suite
        self.link = link
        self.generation = generation

    @property
    def peer_id(self) -> bytes:
        return self.peers[0][0]

    @property
    def peer_keys(self) -> list[bytes]:
        return self.peers[0][1]

    def pinned_keys(self, peer_id: bytes) -> list[bytes]:
        """Raises ``KeyError`` for a peer this bundle does not name."""
        for pid, keys in self.peers:
            if pid == peer_id:
                return keys
        raise KeyError(peer_id)

    def __repr__(self) -> str:
        return f"Bundle(device={self.device_id!r}, peers={[p for p, _ in self.peers]!r}, suite={self.suite!r})"

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary without the PSK or the link password."""
        link = {k: v for k, v in self.link.items() if k != "password"}
        if "password" in self.link:
            link["password"] = "(set)"
        return {
            "device_id": self.device_id.decode("ascii"),
            "generation": self.generation,
            "peers": [{"peer_id": p.decode("ascii"), "keys": [k.hex() for k in ks]} for p, ks in self.peers],
            "suite": self.suite,
            "link": link,
        }


def _body(b: Bundle) -> dict[str, Any]:
    return {
        "format": "moteseal-bundle",
        "v": BUNDLE_VERSION,
        "device": b.device_id,
        "generation": b.generation,
        "peers": [{"id": p, "keys": list(ks)} for p, ks in b.peers],
        "psk": b.psk,
        "suite": b.suite,
        "link": dict(b.link),
    }


def _check(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(cbor2.dumps(body, canonical=True)).digest()[:CHECK_BYTES]


def encode_bundle(b: Bundle) -> bytes:
    body = _body(b)
    body["check"] = _check(body)
    return cbor2.dumps(body, canonical=True)


def decode_bundle(data: bytes, source: str = "bundle") -> Bundle:
    """Parse and check a bundle. Raises ``BundleError`` for anything wrong."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{source}: larger than {MAX_BUNDLE_BYTES} bytes; not a bundle")
    try:
        doc = cbor2.loads(data)
    except Exception:  # cbor2 raises several types for truncated/garbled input
        raise BundleError(f"{source}: truncated or corrupted (not valid CBOR)") from None
    if not isinstance(doc, dict) or doc.get("format") != "moteseal-bundle":
        raise BundleError(f"{source}: not a moteseal bundle")
    if doc.get("v") != BUNDLE_VERSION:
        raise BundleError(f"{source}: bundle version {doc.get('v')!r} is not supported (this moteseal reads 1)")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise BundleError(f"{source}: unknown field(s) {sorted(map(str, unknown))}")
    check = doc.get("check")
    body = {k: v for k, v in doc.items() if k != "check"}
    if not isinstance(check, bytes) or len(check) != CHECK_BYTES:
        raise BundleError(f"{source}: checksum missing (truncated or edited)")
    try:
        expected = _check(body)
    except Exception:
        raise BundleError(f"{source}: contents cannot be re-encoded (corrupted)") from None
    if expected != check:
        raise BundleError(f"{source}: checksum mismatch (corrupted or edited); re-provision the device")

    def bad(field: str) -> BundleError:
        return BundleError(f"{source}: field {field!r} missing or malformed")

    try:
        if not isinstance(doc.get("device"), bytes):
            raise ValueError
        device_id = parse_id(doc["device"])
    except Exception:
        raise bad("device") from None
    gen = doc.get("generation")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1:
        raise bad("generation")
    psk = doc.get("psk")
    if not isinstance(psk, bytes) or len(psk) != PSK_BYTES:
        raise bad("psk")
    suite = doc.get("suite")
    if suite not in SUITES:
        raise BundleError(f"{source}: unknown suite {suite!r}")
    peers_raw = doc.get("peers")
    if not isinstance(peers_raw, list) or not peers_raw:
        raise bad("peers")
    peers: list[tuple[bytes, list[bytes]]] = []
    for p in peers_raw:
        if not isinstance(p, dict) or set(p) != {"id", "keys"}:
            raise bad("peers")
        try:
            if not isinstance(p["id"], bytes):
                raise ValueError
            pid = parse_id(p["id"], "peer id")
        except Exception:
            raise bad("peers") from None
        keys = p["keys"]
        if (
            not isinstance(keys, list)
            or not keys
            or not all(isinstance(k, bytes) and len(k) == 32 for k in keys)
            or len(set(keys)) != len(keys)
        ):
            raise bad("peers")
        peers.append((pid, keys))
    link = doc.get("link")
    if not isinstance(link, dict) or link.get("kind") not in _LINK_FIELDS:
        raise bad("link")
    allowed = _LINK_FIELDS[link["kind"]]
    for k, v in link.items():
        if k not in allowed or not isinstance(v, allowed[k]) or isinstance(v, bool):
            raise bad("link")
    return Bundle(device_id, peers, psk, suite, link, gen)


def write_bundle(path: str | os.PathLike[str], b: Bundle, overwrite: bool = False) -> None:
    """Write ``b`` 0600, atomically. Raises ``FileExistsError``."""
    write_private_file(path, encode_bundle(b), overwrite)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Raises ``FileNotFoundError``, ``KeyPermissionError`` or ``BundleError``."""
    try:
        data = read_private_file(path, MAX_BUNDLE_BYTES)
    except KeyFileError as e:
        if type(e) is KeyFileError:  # too large
            raise BundleError(str(e)) from None
        raise
    return decode_bundle(data, str(path))


def new_psk() -> bytes:
    return nacl.utils.random(PSK_BYTES)


def provision_device(
    registry: Registry, device_id: bytes, suite: str, link: dict[str, Any], replace: bool = False
) -> tuple[DeviceRecord, Bundle]:
    """Draw a PSK, record the device (pinning the peer's live keys) and
    return the record and its bundle. Re-provisioning (``replace``)
    invalidates the old PSK at once.

    Raises ``RegistryError`` (exists, no peer key, bad id).
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    psk = new_psk()
    rec = registry.provision(device_id, psk, suite, replace=replace)
    bundle = Bundle(device_id, [(registry.peer_id, rec.pins)], psk, suite, link, rec.generation)
    return rec, bundle


def device_session(backend: Any, bundle: Bundle, counter: Any, peer_id: bytes | None = None, **opts: Any) -> Any:
    """A ``device.session.DeviceSession`` for ``bundle``, talking to
    ``peer_id`` (default: the bundle's first peer) on its newest pinned key.

    During a rotation overlap the bundle pins two keys; the newest is the one
    the peer answers on after the old one is retired. ``counter`` is a
    ``device.counter.Msg1Counter``. Raises ``KeyError`` for a peer the bundle
    does not name.
    """
    from device.session import DeviceSession

    pid = bundle.peer_id if peer_id is None else peer_id
    keys = bundle.pinned_keys(pid)
    return DeviceSession(backend, bundle.device_id, pid, keys[0], bundle.psk, counter, bundle.suite, **opts)

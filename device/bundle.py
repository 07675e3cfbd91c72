"""Device bundles: the reader that runs on the device (CPython and MicroPython).

A bundle is what ``moteseal provision`` writes for a device to be flashed
with; its CDDL is in ``docs/keys.md``. MicroPython has no cbor2, so this
module reads the one shape a bundle has with a small canonical-CBOR reader
of its own; ``moteseal.keys.provision`` (CPython) writes bundles with cbor2 and
reads them back through this same code, so the two runtimes accept exactly
the same files.

Invariants:
- Rule 1: only canonical CBOR is accepted (RFC 8949 section 4.2.1:
  shortest-form heads, definite lengths, map keys in length-first order,
  no duplicates), of five major types: unsigned integers, byte strings,
  text strings, arrays and maps. Anything else is a ``BundleError``.
- Rule 2: ``check`` is SHA-256 over the canonical encoding of the map
  without its ``check`` entry, truncated to 16 bytes. Because the file is
  canonical, that encoding is the file's own bytes with the entry cut out
  and the map head one lower, so no encoder is needed here.
- Rule 3: text strings are printable ASCII (0x20..0x7e), so the two
  runtimes' different UTF-8 decoders never disagree on a bundle.
- Rule 4: limits: ``BUNDLE_MAX_BYTES`` in all (two peers with two keys each
  take about 400), ``_MAX_ITEMS`` per array or map, ``_MAX_DEPTH`` levels.
- Every failure raises ``BundleError`` (a ``LocalError``: the file is the
  caller's, not the wire's); nothing else escapes ``decode_bundle``.
"""

import hashlib

from device.errors import LocalError
from device.noise import SUITES

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

BUNDLE_VERSION = const(1)
BUNDLE_MAX_BYTES = const(4096)  # a whole bundle; see Rule 4
CHECK_BYTES = const(16)  # SHA-256 truncated: a checksum, not a signature
PSK_BYTES = const(32)
KEY_BYTES = const(32)
PIN_BYTES = const(32)  # SHA-256
ID_MAX_BYTES = const(16)  # docs/protocol.md: ids are 1..16 bytes
_MAX_ITEMS = const(16)  # per array or map: 9 top-level fields, a few peers and keys
_MAX_DEPTH = const(4)  # map > peers array > peer map > keys array

FIELDS = ("format", "v", "device", "generation", "peers", "psk", "suite", "link", "pad", "check")
PAD_KINDS = ("hs", "up", "down")  # device/padding.py PadPolicy; each an array of buckets
LINK_FIELDS = {
    # TLS (all optional, so older bundles read the same): "ca" the broker's
    # CA certificate(s), DER; "pin" SHA-256 of the broker's certificate,
    # DER; "server_name" the name its certificate must carry (default: host).
    "mqtt": {"kind": str, "host": str, "port": int, "username": str, "password": str,
             "ca": bytes, "pin": bytes, "server_name": str},
    "serial": {"kind": str, "port": str, "baud": int},
    "none": {"kind": str},
}


class BundleError(LocalError):
    """A bundle is truncated, corrupted, edited, of an unknown version or
    malformed. The CLI exits 3 (security refusal)."""

    exit_code = 3


def is_id(b):
    """True for a device or peer id: 1..16 bytes of ``[A-Za-z0-9._-]``."""
    if not isinstance(b, bytes) or not 1 <= len(b) <= ID_MAX_BYTES:
        return False
    for c in b:
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 45 or c == 46 or c == 95):
            return False
    return True


def is_text(s):
    """Rule 3: printable ASCII only."""
    if not isinstance(s, str):
        return False
    for ch in s:
        if not " " <= ch <= "~":
            return False
    return True


class Bundle:
    """What ``device.session.DeviceSession`` needs: ``device_id``,
    ``peer_id`` and ``peer_keys`` (the first peer's pinned static keys,
    newest first), ``psk``, ``suite``; plus ``peers`` (all of them, as
    ``(peer_id, [pub, ...])``), ``link``, ``generation`` and ``pad`` (a
    ``device.padding.PadPolicy`` if the device pads, else None: the field
    is absent from bundles of devices that do not, so a bundle reader from
    before padding refuses a padding bundle rather than run unpadded). ``repr`` shows
    neither the PSK nor the link password."""

    def __init__(self, device_id, peers, psk, suite, link, generation=1, pad=None):
        self.pad = pad
        self.device_id = device_id
        self.peers = peers
        self.psk = psk
        self.suite = suite
        self.link = link
        self.generation = generation

    @property
    def peer_id(self):
        return self.peers[0][0]

    @property
    def peer_keys(self):
        return self.peers[0][1]

    def pinned_keys(self, peer_id):
        """Raises ``KeyError`` for a peer this bundle does not name."""
        for pid, keys in self.peers:
            if pid == peer_id:
                return keys
        raise KeyError(peer_id)

    def __repr__(self):
        return "Bundle(device=%r, peers=%r, suite=%r)" % (self.device_id, [p for p, _ in self.peers], self.suite)


class _Reader:
    """Canonical CBOR items from ``data`` (Rule 1)."""

    def __init__(self, data):
        self.d = data
        self.off = 0
        self.check_span = None  # (start, end) of the top-level "check" entry

    def head(self):
        d = self.d
        n = len(d)
        if self.off >= n:
            raise BundleError("truncated")
        b = d[self.off]
        major = b >> 5
        ai = b & 31
        self.off += 1
        if ai < 24:
            return major, ai
        if ai > 27:
            raise BundleError("indefinite length or reserved CBOR item")
        size = 1 << (ai - 24)
        if self.off + size > n:
            raise BundleError("truncated")
        v = 0
        for i in range(size):
            v = (v << 8) | d[self.off + i]
        self.off += size
        if (size == 1 and v < 24) or (size > 1 and v < (1 << (4 * size))):
            raise BundleError("non-canonical CBOR integer")
        return major, v

    def item(self, depth, top=False):
        if depth > _MAX_DEPTH:
            raise BundleError("nested too deeply")
        major, v = self.head()
        if major == 0:
            return v
        if major == 2 or major == 3:
            end = self.off + v
            if end > len(self.d):
                raise BundleError("truncated")
            raw = bytes(self.d[self.off:end])
            self.off = end
            if major == 2:
                return raw
            for c in raw:
                if not 0x20 <= c <= 0x7E:
                    raise BundleError("text is not printable ASCII")
            return raw.decode()
        if major == 4:
            if v > _MAX_ITEMS:
                raise BundleError("array too long")
            return [self.item(depth + 1) for _ in range(v)]
        if major == 5:
            if v > _MAX_ITEMS:
                raise BundleError("map too long")
            out = {}
            prev = None
            for _ in range(v):
                start = self.off
                k = self.item(depth + 1)
                if not isinstance(k, str):
                    raise BundleError("map key is not text")
                kb = bytes(self.d[start:self.off])
                if prev is not None and (len(kb) < len(prev) or (len(kb) == len(prev) and kb <= prev)):
                    raise BundleError("map keys not in canonical order")
                prev = kb
                out[k] = self.item(depth + 1)
                if top and k == "check":
                    self.check_span = (start, self.off)
            return out
        raise BundleError("unsupported CBOR type")


def _check_of(data, span, count):
    # Rule 2: the body is the file minus the check entry, with the map head
    # (one byte: fewer than 24 entries) one lower.
    h = hashlib.sha256(bytes([0xA0 | (count - 1)]))
    h.update(data[1:span[0]])
    h.update(data[span[1]:])
    return h.digest()[:CHECK_BYTES]


def decode_bundle(data):
    """Parse and check a bundle; returns a ``Bundle``. Raises ``BundleError``
    (truncated, oversized, non-canonical, wrong checksum, unknown version,
    field or suite, malformed field)."""
    if len(data) > BUNDLE_MAX_BYTES:
        raise BundleError("larger than %d bytes; not a bundle" % BUNDLE_MAX_BYTES)
    r = _Reader(data)
    doc = r.item(0, True)
    if r.off != len(data):
        raise BundleError("trailing bytes after the bundle")
    if not isinstance(doc, dict) or doc.get("format") != "moteseal-bundle":
        raise BundleError("not a moteseal bundle")
    if doc.get("v") != BUNDLE_VERSION:
        raise BundleError("bundle version %r is not supported (this moteseal reads 1)" % (doc.get("v"),))
    for k in doc:
        if k not in FIELDS:
            raise BundleError("unknown field %r" % k)
    check = doc.get("check")
    if r.check_span is None or not isinstance(check, bytes) or len(check) != CHECK_BYTES:
        raise BundleError("checksum missing (truncated or edited)")
    if data[0] >= 0xB8 or _check_of(data, r.check_span, len(doc)) != check:
        raise BundleError("checksum mismatch (corrupted or edited); provision the device again")

    device_id = doc.get("device")
    if not is_id(device_id):
        raise BundleError("field 'device' missing or malformed")
    gen = doc.get("generation")
    if not isinstance(gen, int) or gen < 1:
        raise BundleError("field 'generation' missing or malformed")
    psk = doc.get("psk")
    if not isinstance(psk, bytes) or len(psk) != PSK_BYTES:
        raise BundleError("field 'psk' missing or malformed")
    suite = doc.get("suite")
    if suite not in SUITES:
        raise BundleError("unknown suite %r" % (suite,))
    peers = doc.get("peers")
    if not isinstance(peers, list) or not peers:
        raise BundleError("field 'peers' missing or malformed")
    out = []
    for p in peers:
        if not isinstance(p, dict) or len(p) != 2 or not is_id(p.get("id")):
            raise BundleError("field 'peers' missing or malformed")
        keys = p.get("keys")
        if not isinstance(keys, list) or not keys:
            raise BundleError("field 'peers' missing or malformed")
        for i, k in enumerate(keys):
            if not isinstance(k, bytes) or len(k) != KEY_BYTES or k in keys[:i]:
                raise BundleError("field 'peers' missing or malformed")
        out.append((p["id"], keys))
    link = doc.get("link")
    if not isinstance(link, dict) or link.get("kind") not in LINK_FIELDS:
        raise BundleError("field 'link' missing or malformed")
    allowed = LINK_FIELDS[link["kind"]]
    for k in link:
        if k not in allowed or not isinstance(link[k], allowed[k]):
            raise BundleError("field 'link' missing or malformed")
    if "pin" in link and len(link["pin"]) != PIN_BYTES:
        raise BundleError("field 'link' pin is not a SHA-256 hash")
    if "server_name" in link and "ca" not in link and "pin" not in link:
        raise BundleError("field 'link' server_name without ca or pin")
    pad = doc.get("pad")
    if pad is not None:
        if not isinstance(pad, dict):
            raise BundleError("field 'pad' malformed")
        for k in pad:
            v = pad[k]
            if k not in PAD_KINDS or not isinstance(v, list) or not v:
                raise BundleError("field 'pad' malformed")
        from device.padding import PadPolicy  # only a device that pads loads it

        try:
            pad = PadPolicy(hs=pad.get("hs"), up=pad.get("up"), down=pad.get("down"))
        except LocalError:
            raise BundleError("field 'pad' malformed")
    return Bundle(device_id, out, psk, suite, link, gen, pad)


def load_bundle(path):
    """Read and decode a bundle file on the device. Raises ``BundleError``
    and ``OSError``. (On CPython, ``moteseal.keys.provision.read_bundle`` also
    checks the file's permissions.)"""
    with open(path, "rb") as f:
        data = f.read(BUNDLE_MAX_BYTES + 1)
    return decode_bundle(data)

"""Safety numbers: a human-comparable fingerprint of a static public key.

Two people compare 60 digits (12 groups of 5) read off two screens, or scan
a QR code, instead of 64 hex characters. The construction follows Signal's
safety numbers (``NumericFingerprintGenerator``): an iterated hash makes a
targeted second key with the same number cost ``ITERATIONS`` times more.

    h = SHA-512(0x00 0x01 || "moteseal-x25519" || pub)
    repeat ITERATIONS times: h = SHA-512(h || pub)
    group i (0..11) = big-endian uint40(h[5i : 5i+5]) mod 100000, 5 digits

The exact bytes are part of the contract (``docs/keys.md``): another
implementation must print the same number for the same key.
"""

from __future__ import annotations

import hashlib
import io
import os

import segno

ITERATIONS = 5200  # Signal's figure
GROUPS = 12
GROUP_DIGITS = 5
_PREFIX = b"\x00\x01moteseal-x25519"


def safety_number(pub: bytes) -> str:
    """The 60-digit safety number of a 32-byte public key, as 12 groups
    separated by spaces. Raises ``ValueError`` for a key of the wrong size."""
    if len(pub) != 32:
        raise ValueError("a public key is 32 bytes")
    h = hashlib.sha512(_PREFIX + pub).digest()
    for _ in range(ITERATIONS):
        h = hashlib.sha512(h + pub).digest()
    groups = []
    for i in range(GROUPS):
        chunk = int.from_bytes(h[5 * i : 5 * i + 5], "big") % 100000
        groups.append("%05d" % chunk)
    return " ".join(groups)


def short_id(pub: bytes) -> str:
    """The first two groups: enough to tell a fleet's keys apart in a table,
    not enough to verify a key (use the full number for that)."""
    return " ".join(safety_number(pub).split(" ")[:2])


def format_block(number: str) -> str:
    """Three lines of four groups, the layout people read aloud."""
    g = number.split(" ")
    return "\n".join(" ".join(g[i : i + 4]) for i in range(0, len(g), 4))


def qr_payload(number: str) -> str:
    """Digits only: QR numeric mode keeps the code at version 2 (25x25 modules)."""
    return number.replace(" ", "")


def qr_terminal(number: str) -> str:
    """The QR code drawn with block characters for a terminal."""
    qr = segno.make(qr_payload(number), error="m")
    buf = io.StringIO()
    qr.terminal(out=buf, compact=True)
    return buf.getvalue()


def qr_save(number: str, path: str | os.PathLike[str]) -> None:
    """Write the QR code as PNG or SVG (chosen by the file extension).

    Raises ``ValueError`` for any other extension.
    """
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"{path}: QR output must end in .png or .svg")
    segno.make(qr_payload(number), error="m").save(str(path), scale=8, border=4)

"""Live interop over stdin/stdout: one Noise NK handshake, then transport
messages, one hex-encoded bare Noise message per line (docs/conformance.md).

CPython only. The wire is standard Noise, not moteseal's envelope: no routing
header, implicit nonces counted 0, 1, 2, ... per direction, and no automatic
rekey, so any Noise implementation can sit on the other end of two pipes.

Invariants:
- Rule 1: the initiator writes message 1 and reads message 2; the responder
  reads message 1 and writes message 2. Handshake payloads are empty.
- Rule 2: the side given ``sends`` leads: after the handshake it sends each
  payload as one transport message and reads one reply, which must carry the
  same plaintext; then it exits. A side without ``sends`` echoes: it
  answers every transport message with one carrying the same plaintext until
  its input ends.
- Rule 3: nothing secret or plaintext is written to the log stream, only
  counts and error classes.
"""

from __future__ import annotations

import binascii
from typing import IO, Sequence

from device.errors import LocalError, RemoteError
from device.noise import DHLEN_BYTES, PSK_BYTES, TAG_BYTES, NKInitiator, NKResponder, parse_suite
from device.transport import Transport

# Noise section 3: every message is at most 65535 bytes.
NOISE_MAX_BYTES = 65535
TRANSPORT_MAX_PAYLOAD_BYTES = NOISE_MAX_BYTES - TAG_BYTES
HANDSHAKE_MAX_PAYLOAD_BYTES = NOISE_MAX_BYTES - DHLEN_BYTES - TAG_BYTES
LINE_MAX_BYTES = 2 * NOISE_MAX_BYTES + 2  # hex of the largest message, plus CR LF
NO_REKEY = 1 << 64  # standard Noise: the Split() keys for every nonce


class InteropFailed(Exception):
    """The exchange went wrong; the message says how (no secrets in it)."""


def _read_message(inp: IO[bytes], what: str) -> bytes:
    line = inp.readline(LINE_MAX_BYTES + 1)
    if not line:
        raise EOFError(what)
    if len(line) > LINE_MAX_BYTES:
        raise InteropFailed(f"{what}: line longer than a Noise message can be")
    try:
        return binascii.unhexlify(line.strip())
    except (binascii.Error, ValueError):
        raise InteropFailed(f"{what}: line is not hex") from None


def _write_message(out: IO[bytes], msg: bytes) -> None:
    out.write(binascii.hexlify(msg) + b"\n")
    out.flush()


class Peer:
    """One side of the exchange: ``handshake()`` then ``lead()`` or ``echo()``."""

    def __init__(self, backend: object, role: str, suite: str, static: bytes | None = None,
                 remote_static: bytes | None = None, psk: bytes | None = None,
                 prologue: bytes = b"") -> None:
        """Raises ``LocalError`` for a bad suite, key or PSK."""
        psk_pos = parse_suite(suite)[0]
        if psk_pos >= 0 and (psk is None or len(psk) != PSK_BYTES):
            raise LocalError(f"{suite} needs a 32-byte --psk")
        if role == "initiator":
            if static is not None:
                raise LocalError("an NK initiator has no static key: give --remote-static")
            if remote_static is None:
                raise LocalError("the initiator needs --remote-static (the responder's public key)")
            self.hs: NKInitiator | NKResponder = NKInitiator(
                backend, remote_static, psk, prologue, suite, HANDSHAKE_MAX_PAYLOAD_BYTES)
        elif role == "responder":
            if static is None:
                raise LocalError("the responder needs --static (its private key)")
            if remote_static is not None:
                raise LocalError("an NK responder has no remote static key")
            pub = backend.x25519_base(static)  # type: ignore[attr-defined]
            self.hs = NKResponder(backend, (static, pub), psk, prologue, suite,
                                  HANDSHAKE_MAX_PAYLOAD_BYTES)
        else:
            raise LocalError("role must be initiator or responder")
        self.role = role
        self.transport: Transport | None = None
        self._recv_nonce = 0

    def handshake(self, inp: IO[bytes], out: IO[bytes]) -> None:
        """Messages 1 and 2 (Rule 1). Raises ``InteropFailed``, ``EOFError``."""
        hs = self.hs
        try:
            if isinstance(hs, NKInitiator):
                _write_message(out, hs.write_message(b""))
                hs.read_message(_read_message(inp, "message 2"))
            else:
                hs.read_message(_read_message(inp, "message 1"))
                _write_message(out, hs.write_message(b""))
        except RemoteError as e:
            raise InteropFailed(f"handshake message rejected: {type(e).__name__}") from None
        self.transport = hs.into_transport(rekey_interval=NO_REKEY,
                                           max_payload=TRANSPORT_MAX_PAYLOAD_BYTES)

    def seal(self, plaintext: bytes) -> bytes:
        """The next transport message (nonce = messages sent so far)."""
        if self.transport is None:
            raise LocalError("handshake first")
        out = bytearray(len(plaintext) + TAG_BYTES)
        self.transport.encrypt_into(b"", 0, plaintext, 0, len(plaintext), out, 0)
        return bytes(out)

    def open(self, msg: bytes, what: str) -> bytes:
        """Opens the next transport message (nonce = messages received so far).
        Raises ``InteropFailed`` if it does not authenticate."""
        if self.transport is None:
            raise LocalError("handshake first")
        out = bytearray(max(0, len(msg) - TAG_BYTES))
        try:
            n = self.transport.decrypt_into(self._recv_nonce, b"", 0, msg, 0, len(msg), out, 0)
        except RemoteError as e:
            raise InteropFailed(f"{what} rejected: {type(e).__name__}") from None
        self._recv_nonce += 1
        return bytes(out[:n])

    def lead(self, inp: IO[bytes], out: IO[bytes], sends: Sequence[bytes]) -> int:
        """Rule 2, leading side: returns how many echoes matched; raises
        ``InteropFailed`` at the first that does not."""
        for i, p in enumerate(sends):
            _write_message(out, self.seal(p))
            try:
                echo = self.open(_read_message(inp, f"echo {i + 1}"), f"echo {i + 1}")
            except EOFError:
                raise InteropFailed(f"input ended before echo {i + 1}") from None
            if echo != p:
                raise InteropFailed(f"echo {i + 1} differs from what was sent")
        return len(sends)

    def echo(self, inp: IO[bytes], out: IO[bytes]) -> int:
        """Rule 2, echoing side: returns how many messages it echoed when the
        input ends; raises ``InteropFailed`` on a message that does not open."""
        n = 0
        while True:
            try:
                msg = _read_message(inp, f"transport message {n + 1}")
            except EOFError:
                return n
            _write_message(out, self.seal(self.open(msg, f"transport message {n + 1}")))
            n += 1


def run(backend: object, role: str, suite: str, inp: IO[bytes], out: IO[bytes],
        log: IO[str], static: bytes | None = None, remote_static: bytes | None = None,
        psk: bytes | None = None, prologue: bytes = b"",
        sends: Sequence[bytes] | None = None) -> int:
    """The whole exchange; returns the exit status (0 done, 1 failure).
    Raises ``LocalError`` for bad arguments (a usage error)."""
    peer = Peer(backend, role, suite, static, remote_static, psk, prologue)
    try:
        peer.handshake(inp, out)
        if sends is not None:
            n = peer.lead(inp, out, sends)
            log.write(f"interop: handshake done, {n} echoes verified\n")
        else:
            n = peer.echo(inp, out)
            log.write(f"interop: handshake done, {n} messages echoed\n")
    except EOFError as e:
        log.write(f"interop: input ended before {e}\n")
        return 1
    except InteropFailed as e:
        log.write(f"interop: {e}\n")
        return 1
    except BrokenPipeError:
        log.write("interop: the other side closed its input\n")
        return 1
    return 0

"""The one moteseal exception tree, split by blame (STYLE.md section 3).

Invariants:
- ``LocalError`` and its subclasses mean the caller made a mistake (wrong
  state, buffer too small, expired session, bad argument). Retrying the same
  call will fail the same way.
- ``RemoteError`` and its subclasses mean bytes from the wire were bad. A
  decoder that takes remote bytes returns a result or raises ``RemoteError``;
  nothing else escapes, and the object that raised it is unchanged (or, for a
  handshake, moved to its terminal state).
- ``AuthError`` is deliberately coarse: a bad tag, a wrong key, a wrong PSK,
  a low-order public key and a tampered routing header all look the same, so
  an attacker learns nothing about which check failed.
"""


class MotesealError(Exception):
    """Root of every error moteseal raises on purpose."""


class LocalError(MotesealError):
    """The caller made a mistake: wrong state, wrong size, wrong argument."""


class HandshakeFailed(LocalError):
    """A call on a handshake that already failed (terminal state)."""


class SessionExpired(LocalError):
    """The transport reached its message or age limit; handshake again."""


class BufferTooSmall(LocalError):
    """A caller-provided buffer cannot hold the output."""


class MessageTooLarge(LocalError):
    """A plaintext exceeds the configured maximum message size."""


class StorageError(MotesealError):
    """State that must be durable could not be written (a full disk, an I/O
    error). Neither the caller's nor the wire's fault: nothing was changed,
    and the same call may succeed once the store recovers."""


class RemoteError(MotesealError):
    """Bad bytes from the wire."""


class DecodeError(RemoteError):
    """Malformed, truncated, oversized, non-canonical or wrong-version input."""


class ReplayError(RemoteError):
    """A duplicate, a message older than the replay window, or a replayed
    handshake message 1 (counter not above the highest seen)."""


class AuthError(RemoteError):
    """Anything that does not authenticate (coarse on purpose)."""



# No ``__all__``: every public name here is one of the classes above, so
# ``import *`` exports exactly them, and the package ``__init__`` is the one
# public surface (STYLE.md section 6). A list here would cost devices heap.

"""moteseal device stack: the sans-I/O protocol core.

This package's ``__init__`` imports only core modules, which run unchanged on
MicroPython. CPython-only modules (``cli``, ``backend_nacl``, transports) are
imported by name where they are needed; ``NaclBackend`` is re-exported here
only where PyNaCl imports.
"""

from device.errors import (AuthError, BufferTooSmall, DecodeError,
                           HandshakeFailed, LocalError, MessageTooLarge,
                           MotesealError, RemoteError, ReplayError,
                           SessionExpired)
from device.noise import DEFAULT_SUITE, SUITES, NKInitiator, NKResponder
from device.transport import Transport
from device.replay import ReplayWindow
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.session import (DeviceSession, NonpersistingDirectory,
                            PeerSessions, Received)

__all__ = [
    "AuthError", "BufferTooSmall", "DecodeError", "HandshakeFailed",
    "LocalError", "MessageTooLarge", "MotesealError", "RemoteError",
    "ReplayError", "SessionExpired",
    "DEFAULT_SUITE", "SUITES", "NKInitiator", "NKResponder", "Transport",
    "ReplayWindow", "Msg1Counter", "NonpersistingCounterStore",
    "DeviceSession", "NonpersistingDirectory", "PeerSessions", "Received",
]

try:
    from device.backend_nacl import NaclBackend  # CPython only
    __all__.append("NaclBackend")
except ImportError:
    pass

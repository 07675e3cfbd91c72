"""``LockedDeviceSession``: a ``device.session.DeviceSession`` that threads
may share (session Rule 7), for hosts only.

The core imports no threading and a device never shares its session, so the
lock lives here rather than in ``device/session.py``: a board's heap pays
nothing for it. Every public method that touches session state runs under
the lock, which makes reading a ``Transport``'s send nonce for the header
and sealing with it one step (no nonce goes out twice), and a replay-window
check and its commit one step. ``receive`` and ``send`` (the allocating
conveniences) go through the locked ``receive_into`` and ``send_into``.
"""

from __future__ import annotations

import threading
from typing import Any, ContextManager

from device.session import DeviceSession

__all__ = ["LockedDeviceSession"]


class LockedDeviceSession(DeviceSession):
    """``DeviceSession(*args, **opts)`` whose ``handshake``,
    ``receive_into`` and ``send_into`` run under ``lock`` (default: a new
    ``threading.Lock``). Raises what ``DeviceSession`` raises."""

    def __init__(self, *args: Any, lock: ContextManager[Any] | None = None, **opts: Any) -> None:
        super().__init__(*args, **opts)
        self.lock = lock if lock is not None else threading.Lock()

    def handshake(self, payload: bytes = b"", now: float | None = None,
                  buckets: Any = None) -> bytes:
        with self.lock:
            return super().handshake(payload, now, buckets)

    def receive_into(self, buf: Any, n: int, out: Any, now: float | None = None) -> int:
        with self.lock:
            return super().receive_into(buf, n, out, now)

    def send_into(self, src: Any, n: int, out: Any, now: float | None = None,
                  buckets: Any = None) -> int:
        with self.lock:  # the header's nonce and the sealing nonce are one (Rule 7)
            return super().send_into(src, n, out, now, buckets)

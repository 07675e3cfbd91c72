"""Which shard owns a device: the one stable function every moteseal part
that splits devices uses (gateways here; the hub workers the same).

Invariant: ``shard_of(id, n)`` is the first 8 bytes of SHA-256 of the id's
UTF-8 bytes, read as a big-endian integer, mod ``n`` (docs/scaling.md). It
depends on nothing but its arguments, so every process, host and version
agrees. The id is public (an MQTT topic level); no key is involved, which
is why this is the one gateway module that may import hashlib
(tests/test_architecture.py).
"""

from __future__ import annotations

import hashlib

__all__ = ["shard_of"]


def shard_of(device_id: str, shards: int) -> int:
    """The shard (0 .. ``shards`` - 1) owning ``device_id``. Raises
    ``ValueError`` if ``shards`` < 1."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards

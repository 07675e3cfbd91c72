"""The peer: the long-running process that answers devices' handshakes
and decrypts their telemetry (CPython only)."""

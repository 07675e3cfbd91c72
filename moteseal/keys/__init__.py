"""Keys, fingerprints, the peer's device registry and provisioning
(CPython only)."""

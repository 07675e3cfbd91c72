"""The moteseal gateway: a blind relay of envelopes between links.

It decodes only the outer envelope (with cbor2) to route, and imports no key,
session or decryption code: nothing from ``device`` (``tests/test_gateway_imports.py``
enforces that).
"""

"""moteseal host application: everything that runs beside a device, never on one.

The device stack itself is ``device/`` (the sans-I/O core, shared with
MicroPython). Layers and import rules: docs/architecture.md.

This package and ``moteseal.conformance`` stay importable on MicroPython
(the conformance runner runs there), so this file holds only lazy
re-exports (PEP 562, which MicroPython also has).
"""

_EXPORTS = {"NaclBackend": "moteseal.crypto.backend_nacl"}  # CPython only


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(name)
    return getattr(__import__(mod, None, None, [name]), name)

"""moteseal on MicroPython: the port's primitives (``x25519``,
``chacha20poly1305``, ``hashes``), its backend (``backend.MicroBackend``),
links and board glue. The protocol core itself is ``device/``, unchanged.

Nothing is imported here, so a board loads only the modules it uses.
"""

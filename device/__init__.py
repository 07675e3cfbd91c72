"""moteseal device stack: the sans-I/O protocol core.

This package's ``__init__`` imports only core modules, which run unchanged on
MicroPython. CPython-only modules (``cli``, ``backend_nacl``, transports) are
imported by name where they are needed.
"""

from device.errors import *  # noqa: F401,F403

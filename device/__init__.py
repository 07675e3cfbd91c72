"""moteseal device stack: the sans-I/O protocol core.

The public API is re-exported here, lazily (PEP 562 module ``__getattr__``,
which MicroPython also has): importing one module of the package, such as
``device.framing`` in the gateway's serial bridge, loads no Noise, session
or key code. Core modules run unchanged on MicroPython; CPython-only modules
(the CLI, the PyNaCl backend, links) live in the host package ``moteseal``.
"""

_EXPORTS = {
    "MotesealError": "device.errors", "LocalError": "device.errors",
    "RemoteError": "device.errors", "DecodeError": "device.errors",
    "ReplayError": "device.errors", "AuthError": "device.errors",
    "HandshakeFailed": "device.errors", "SessionExpired": "device.errors",
    "BufferTooSmall": "device.errors", "MessageTooLarge": "device.errors",
    "DEFAULT_SUITE": "device.noise", "SUITES": "device.noise",
    "NKInitiator": "device.noise", "NKResponder": "device.noise",
    "Transport": "device.transport", "ReplayWindow": "device.replay",
    "Msg1Counter": "device.counter", "NonpersistingCounterStore": "device.counter",
    "DeviceSession": "device.session", "PeerSessions": "device.peer",
    "NonpersistingDirectory": "device.peer", "Received": "device.peer",
    "FrameDecoder": "device.framing",
    "PadPolicy": "device.padding", "Groups": "device.group",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is not None:
        return getattr(__import__(mod, None, None, [name]), name)
    # MicroPython resolves ``from device import envelope`` through this hook
    # too; CPython imports submodules before it gets here.
    try:
        return __import__("device." + name, None, None, [name])
    except ImportError:
        raise AttributeError(name)

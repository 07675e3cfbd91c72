"""The package re-exports its API lazily, so the gateway's serial bridge,
which shares the byte framing with devices, loads no Noise, session, key or
backend code at run time."""

import subprocess
import sys


def test_the_serial_bridge_loads_no_crypto_or_session_module():
    code = ("import sys, gateway.serial_bridge, device.framing, moteseal.links.serial_link\n"
            "bad = [m for m in sys.modules if m in ('device.noise', 'device.transport', "
            "'device.session', 'moteseal.crypto.backend_nacl', 'moteseal.keys.keyfile', 'moteseal.keys.registry', "
            "'moteseal.keys.provision', 'nacl', 'cryptography', 'noise')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_public_api_is_reexported():
    import device
    for name in device.__all__:
        assert getattr(device, name) is not None
    from device import NKInitiator, PeerSessions  # noqa: F401

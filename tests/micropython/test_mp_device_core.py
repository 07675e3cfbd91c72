"""The core on MicroPython with ``MicroBackend`` against CPython with
``NaclBackend``, over real pipes: a device session whose transport path
runs between ``micropython.heap_lock()`` and ``heap_unlock()``, raw Noise NK
in both roles for every suite, and every vector again from the built
``.mpy`` files (the code a board runs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash.build import build, compile_module, source_dirs
from device.noise import SUITES, NKInitiator, NKResponder
from moteseal.keys.provision import Bundle, write_bundle
from device.session import EV_DATA
from device.peer import NonpersistingDirectory, PeerSessions
from tests.mp_helpers import ROOT, MicroPythonFailed, mp_binary, mp_env
from tests.mp_vectors import (LOW_ORDER, RFC7748_5_2, RFC7748_6_1, RFC7748_ITER_1,
                                      RFC7748_ITER_1000, RFC8439_2_8_2, RFC8439_A_5)

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(300)]


class MpPipe:
    """A MicroPython process spoken to in lines over stdin/stdout."""

    def __init__(self, code: str, tmp_path: Path, args: list[str], env: dict | None = None,
                 cwd: Path = ROOT) -> None:
        script = tmp_path / "driver.py"
        script.write_text(code)
        self.proc = subprocess.Popen([mp_binary(), "-X", "heapsize=256k", str(script), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=env or mp_env())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def recv(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise MicroPythonFailed(self.proc.stderr.read() if self.proc.stderr else "")
        return line.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


DEVICE_DRIVER = """
import sys, gc, json, micropython
from binascii import hexlify, unhexlify
from micropython_port.backend import MicroBackend
from device.session import DeviceSession, EV_DATA
from device.counter import Msg1Counter, NonpersistingCounterStore
pub, psk, suite = unhexlify(sys.argv[1]), unhexlify(sys.argv[2]) or None, sys.argv[3]
dev = DeviceSession(MicroBackend(), b"mote-1", b"peer", pub, psk,
                    Msg1Counter(NonpersistingCounterStore()), suite)
print(hexlify(dev.handshake(b"t=21.5C", 0)).decode())
ev, _ = dev.receive(unhexlify(sys.stdin.readline().strip()), 0)
print("hs", ev)
K = int(sys.stdin.readline())
envs = [bytearray(unhexlify(sys.stdin.readline().strip())) for _ in range(K)]
lens = [len(e) for e in envs]
outs = [bytearray(64) for _ in range(K)]
sent = [bytearray(128) for _ in range(K)]
slen = [0] * K
evs = [0] * K
plen = [0] * K
src = bytearray(b"reading-00")
def locked_path():
    # A function, so loop variables are locals (a new global could grow the
    # module dict, an allocation that is the script's, not the session's).
    for i in range(K):
        evs[i] = dev.receive_into(envs[i], lens[i], outs[i], 1)
        plen[i] = dev.last_len
        src[8] = 48 + i // 10
        src[9] = 48 + i % 10
        slen[i] = dev.send_into(src, 10, sent[i], 1)
gc.collect()
micropython.heap_lock()
try:
    locked_path()
finally:
    micropython.heap_unlock()
print(json.dumps([evs, [hexlify(outs[i][:plen[i]]).decode() for i in range(K)],
                  [hexlify(sent[i][:slen[i]]).decode() for i in range(K)]]))
"""


@pytest.mark.parametrize("suite", ["Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                   "Noise_NK_25519_ChaChaPoly_BLAKE2s"])
def test_micropython_device_talks_to_a_cpython_peer_with_the_heap_locked(tmp_path: Path,
                                                                          suite: str) -> None:
    """Handshake over pipes, then 20 envelopes each way: the MicroPython side
    decrypts the peer's and seals its own between heap_lock() and
    heap_unlock(), so any allocation on that path raises MemoryError."""
    backend = NaclBackend()
    priv, pub = backend.generate_keypair()
    psk = backend.random_bytes(32) if "psk" in suite else None
    directory = NonpersistingDirectory([(priv, pub)])
    directory.add(b"mote-1", psk)
    peer = PeerSessions(backend, b"peer", directory, suite)
    mp = MpPipe(DEVICE_DRIVER, tmp_path, [pub.hex(), (psk or b"").hex(), suite])
    try:
        got = peer.receive(bytes.fromhex(mp.recv()))
        assert (got.kind, got.payload) == ("hs1", b"t=21.5C")
        mp.send(got.reply.hex())
        assert mp.recv() == "hs 1"
        cmds = [b"cmd %02d" % i for i in range(20)]
        mp.send("20")
        for c in cmds:
            mp.send(peer.send(b"mote-1", c).hex())
        evs, plain, sent = json.loads(mp.recv())
    finally:
        mp.close()
    assert evs == [EV_DATA] * 20
    assert [bytes.fromhex(p) for p in plain] == cmds
    assert [peer.receive(bytes.fromhex(e)).payload for e in sent] == \
        [b"reading-%02d" % i for i in range(20)]


NOISE_DRIVER = """
import sys
from binascii import hexlify, unhexlify
from micropython_port.backend import MicroBackend
from device.noise import NKInitiator, NKResponder
role, suite, key, psk = sys.argv[1], sys.argv[2], unhexlify(sys.argv[3]), sys.argv[4]
psk = unhexlify(psk) if psk else None
b = MicroBackend()
def rd():
    return unhexlify(sys.stdin.readline().strip())
def wr(m):
    print(hexlify(m).decode())
if role == "initiator":
    hs = NKInitiator(b, key, psk, b"interop", suite)
    wr(hs.write_message(b"from micropython"))
    wr(hs.read_message(rd()))
else:
    hs = NKResponder(b, (key, b.x25519_base(key)), psk, b"interop", suite)
    wr(hs.read_message(rd()))
    wr(hs.write_message(b"from micropython"))
tr = hs.into_transport()
wr(tr.handshake_hash)
for i in range(5):
    wr(tr.encrypt(tr.decrypt(rd()) + b"!"))
"""


@pytest.mark.parametrize("mp_role", ["initiator", "responder"])
@pytest.mark.parametrize("suite", SUITES)
def test_noise_nk_between_micropython_and_cpython_in_both_roles(tmp_path: Path, suite: str,
                                                                mp_role: str) -> None:
    backend = NaclBackend()
    priv, pub = backend.generate_keypair()
    psk = backend.random_bytes(32) if "psk" in suite else None
    mp = MpPipe(NOISE_DRIVER, tmp_path, [mp_role, suite, (pub if mp_role == "initiator" else priv).hex(),
                                         (psk or b"").hex()])
    try:
        if mp_role == "initiator":
            me = NKResponder(backend, (priv, pub), psk, b"interop", suite)
            assert me.read_message(bytes.fromhex(mp.recv())) == b"from micropython"
            mp.send(me.write_message(b"from cpython").hex())
            assert bytes.fromhex(mp.recv()) == b"from cpython"
        else:
            me = NKInitiator(backend, pub, psk, b"interop", suite)
            mp.send(me.write_message(b"from cpython").hex())
            assert bytes.fromhex(mp.recv()) == b"from cpython"
            assert me.read_message(bytes.fromhex(mp.recv())) == b"from micropython"
        tr = me.into_transport()
        assert bytes.fromhex(mp.recv()) == tr.handshake_hash
        for i in range(5):
            mp.send(tr.encrypt(b"ping %d" % i).hex())
            assert tr.decrypt(bytes.fromhex(mp.recv())) == b"ping %d!" % i
    finally:
        mp.close()


# --- every vector again, from the .mpy a board runs -----------------------------


@pytest.fixture(scope="module")
def flash_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flash")
    b = NaclBackend()
    write_bundle(root / "d.bundle", Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])],
                                           b.random_bytes(32),
                                           "Noise_NKpsk0_25519_ChaChaPoly_SHA256", {"kind": "none"}))
    out = root / "flash"
    build(root / "d.bundle", out, "x64", all_modules=True)  # the vectors need BLAKE2s too
    # The vector runner and the peer side are not part of a device build; compile them beside
    # the rest so `-m moteseal.conformance.runner` loads only .mpy.
    core, _ = source_dirs()
    compile_module(core / "peer.py", out / "device" / "peer.mpy", "x64", "device/peer.py")  # the runner plays the peer too
    runner = core.parent / "moteseal" / "conformance" / "runner.py"
    compile_module(runner, out / "moteseal" / "conformance" / "runner.mpy", "x64",
                   "moteseal/conformance/runner.py")
    # The primitives' test hooks and raw RFC 8439 functions (never on a device).
    hooks = Path(__file__).parents[1] / "mp_primitive_hooks.py"
    compile_module(hooks, out / "tests" / "mp_primitive_hooks.mpy", "x64", "tests/mp_primitive_hooks.py")
    assert [p.name for p in out.rglob("*.py")] == ["main.py"]
    return out


def _mp_flash(flash: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # MICROPYPATH holds the flash directory only: nothing can come from source.
    env = {"MICROPYPATH": str(flash), "PATH": "/usr/bin:/bin"}
    return subprocess.run([mp_binary(), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=flash)


def test_cacophony_vectors_pass_from_the_mpy_build(flash_dir: Path, shared_vectors: Path) -> None:
    path = shared_vectors / "vectors" / "noise_nk_cacophony.json"
    p = _mp_flash(flash_dir, "-m", "moteseal.conformance.runner", str(path))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert " 0 failed" in lines[-1], lines[-1]
    n = len(json.loads(path.read_text())["vectors"])
    assert sum(ln.startswith("PASS") for ln in lines) >= n, lines[-3:]


def test_primitive_vectors_pass_from_the_mpy_build(flash_dir: Path, tmp_path: Path) -> None:
    k, iv, ad, pt, ct = RFC8439_2_8_2
    k5, iv5, ad5, ct5, pt5 = RFC8439_A_5
    script = tmp_path / "vectors.py"
    script.write_text(f"""
import json
from binascii import hexlify, unhexlify as U
from micropython_port import x25519 as X, chacha20poly1305 as C
from tests import mp_primitive_hooks as T
def hx(b):
    return hexlify(b).decode()
out = {{"fast": T.has_fast_path()[0:2]}}
out["5.2"] = [hx(X.x25519(U(k), U(u))) for k, u, _ in {RFC7748_5_2!r}]
v = {RFC7748_6_1!r}
a, b = U(v["alice_priv"]), U(v["bob_priv"])
out["6.1"] = [hx(X.x25519_base(a)), hx(X.x25519_base(b)), hx(X.x25519(a, X.x25519_base(b)))]
k = u = U("09" + "00" * 31)
it = []
for i in range(1000):
    k, u = X.x25519(k, u), k
    if i in (0, 999):
        it.append(hx(k))
out["iter"] = it
out["low"] = [hx(X.x25519(U("{RFC7748_6_1['alice_priv']}"), U(p))) for p in {LOW_ORDER!r}]
out["2.8.2"] = hx(T.encrypt_iv(U("{k}"), U("{iv}"), U("{ad}"), U("{pt}")))
out["A.5"] = hx(T.decrypt_iv(U("{k5}"), U("{iv5}"), U("{ad5}"), U("{ct5}")))
print(json.dumps(out))
""")
    p = _mp_flash(flash_dir, str(script))
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["fast"] == [True, True]  # the viper code loaded from .mpy
    assert out["5.2"] == [r for _, _, r in RFC7748_5_2]
    assert out["6.1"] == [RFC7748_6_1["alice_pub"], RFC7748_6_1["bob_pub"], RFC7748_6_1["shared"]]
    assert out["iter"] == [RFC7748_ITER_1, RFC7748_ITER_1000]
    assert out["low"] == ["00" * 32] * len(LOW_ORDER)
    assert out["2.8.2"] == ct
    assert out["A.5"] == pt5


PEER_DRIVER = """
import sys, json
from binascii import hexlify, unhexlify
from micropython_port.backend import MicroBackend
from device.peer import PeerSessions, NonpersistingDirectory
from device.errors import RemoteError
priv, psk, suite = unhexlify(sys.argv[1]), unhexlify(sys.argv[2]) or None, sys.argv[3]
b = MicroBackend()
d = NonpersistingDirectory([(priv, b.x25519_base(priv))])
d.add(b"mote-1", psk)
peer = PeerSessions(b, b"peer", d, suite)
while True:
    line = sys.stdin.readline().strip()
    if not line:
        break
    try:
        r = peer.receive(unhexlify(line))
    except RemoteError as e:
        print(json.dumps({"error": type(e).__name__, "reply": hexlify(e.reply).decode()}))
        continue
    out = {"kind": r.kind, "payload": hexlify(r.payload or b"").decode(),
           "reply": hexlify(r.reply).decode() if r.reply else None}
    if r.kind == "data":
        out["answer"] = hexlify(peer.send(b"mote-1", r.payload.upper())).decode()
    print(json.dumps(out))
"""


@pytest.mark.parametrize("suite", ["Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                   "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s"])
def test_cpython_device_talks_to_a_micropython_peer(tmp_path: Path, suite: str) -> None:
    """The reverse roles at the session level: the peer (responder,
    ``PeerSessions``) on MicroPython, the device on CPython; a replayed
    message 1 is refused there with a hint."""
    from device.counter import Msg1Counter, NonpersistingCounterStore
    from device.session import EV_HANDSHAKE, DeviceSession

    backend = NaclBackend()
    priv, pub = backend.generate_keypair()
    psk = backend.random_bytes(32)
    dev = DeviceSession(backend, b"mote-1", b"peer", pub, psk,
                        Msg1Counter(NonpersistingCounterStore()), suite)
    mp = MpPipe(PEER_DRIVER, tmp_path, [priv.hex(), psk.hex(), suite])
    try:
        hs1 = dev.handshake(b"t=21.5C")
        mp.send(hs1.hex())
        r = json.loads(mp.recv())
        assert (r["kind"], bytes.fromhex(r["payload"])) == ("hs1", b"t=21.5C")
        assert dev.receive(bytes.fromhex(r["reply"]))[0] == EV_HANDSHAKE
        for i in range(5):
            mp.send(dev.send(b"reading %d" % i).hex())
            r = json.loads(mp.recv())
            assert (r["kind"], bytes.fromhex(r["payload"])) == ("data", b"reading %d" % i)
            assert dev.receive(bytes.fromhex(r["answer"])) == (EV_DATA, b"READING %d" % i)
        mp.send(hs1.hex())  # the same message 1 again
        r = json.loads(mp.recv())
        assert r["error"] == "ReplayError" and r["reply"]
    finally:
        mp.close()

"""Conformance runner: Noise test-vector files and moteseal's own vectors.

Runs unchanged on CPython (``moteseal vectors run FILE...``) and on
MicroPython (``micropython -m moteseal.conformance.runner FILE...``) and prints the
same lines on both. File formats: docs/conformance.md.

Invariants:
- Rule 1: every vector in a file yields exactly one line per role
  (``initiator``, ``responder``): ``PASS``, ``FAIL: <reason>`` or
  ``SKIP: <reason>``. Nothing is dropped silently; the summary line
  ``N passed, N failed, N skipped`` counts those lines.
- Rule 2: each role is checked on its own against the vector's bytes, never
  against our other role: what the role writes must equal the vector's
  ciphertext byte for byte, and what it reads is the vector's ciphertext.
- Rule 3: a vector this build cannot run (pattern, DH, cipher, or a hash the
  backend lacks) is a ``SKIP`` with the reason, never a ``FAIL``.
- Rule 4: no I/O except reading the named files and printing lines through
  the caller's ``emit``; the backend comes from the caller (``make_backend``).
"""

import binascii
import json

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import LocalError, MotesealError, RemoteError
from device.noise import NKInitiator, NKResponder, TAG_BYTES, parse_suite
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import EV_DATA, EV_HANDSHAKE, DeviceSession

PATTERNS = ("NK", "NKpsk0", "NKpsk2")
DHS = ("25519",)
CIPHERS = ("ChaChaPoly",)
HASHES = ("SHA256", "BLAKE2s")
ROLES = ("initiator", "responder")
# Noise section 3: a message is at most 65535 bytes.
NOISE_MAX_MESSAGE_BYTES = 65535
# A handshake message of NK carries e before its payload: 65535 - e - tag.
VECTOR_MAX_PAYLOAD_BYTES = NOISE_MAX_MESSAGE_BYTES - 32 - 16
# A transport message is the sealed payload alone: 65535 - tag.
VECTOR_MAX_TRANSPORT_PAYLOAD_BYTES = NOISE_MAX_MESSAGE_BYTES - 16
# Standard Noise never rekeys on its own: one epoch for every 64-bit nonce.
NO_REKEY = 1 << 64
MOTESEAL_FORMAT = 1  # the "moteseal_vectors" value this runner reads

PASS = "PASS"
FAIL = "FAIL"
SKIP = "SKIP"


class VectorFailed(Exception):
    """A role disagreed with its vector; the message is the reason."""


def _h(v, key, required=True):
    # A hex field of vector v, as bytes.
    s = v.get(key)
    if s is None:
        if required:
            raise VectorFailed("vector lacks " + key)
        return None
    try:
        return binascii.unhexlify(s)
    except (ValueError, TypeError):
        raise VectorFailed(key + " is not hex")


def _int(d, key):
    # A required non-negative integer field.
    x = d.get(key)
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise VectorFailed("vector lacks " + key + " (a non-negative integer)")
    return x


def diff(what, got, want):
    """``None`` if equal, else a reason naming the first differing byte."""
    got = bytes(got)
    want = bytes(want)
    if got == want:
        return None
    n = min(len(got), len(want))
    for i in range(n):
        if got[i] != want[i]:
            return what + " differs at byte " + str(i)
    return what + " is " + str(len(got)) + " bytes, vector has " + str(len(want))


def _check(what, got, want):
    r = diff(what, got, want)
    if r is not None:
        raise VectorFailed(r)


def unsupported(name, make_backend):
    """The reason this build cannot run protocol ``name``, or ``None``."""
    parts = str(name).split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        return "unrecognised protocol name"
    bad = []
    if parts[1] not in PATTERNS:
        bad.append("pattern " + parts[1])
    if parts[2] not in DHS:
        bad.append("DH " + parts[2])
    if parts[3] not in CIPHERS:
        bad.append("cipher " + parts[3])
    if parts[4] not in HASHES:
        bad.append("hash " + parts[4])
    if bad:
        return "unsupported " + ", ".join(bad)
    try:
        make_backend().hash(parts[4])
    except LocalError as e:
        return "hash " + parts[4] + " unavailable on this backend (" + str(e) + ")"
    return None


def _psk(v, side, psk_pos):
    key = side + "_psks"
    psks = v.get(key)
    if psks is None and v.get(side + "_psk") is not None:
        psks = [v[side + "_psk"]]  # older single-PSK spelling
    if psk_pos < 0:
        if psks:
            raise VectorFailed(key + " given for a pattern without psk")
        return None
    if not psks:
        raise VectorFailed("vector lacks " + key)
    if len(psks) != 1:
        raise VectorFailed(key + " has " + str(len(psks)) + " PSKs, the pattern takes 1")
    try:
        psk = binascii.unhexlify(psks[0])
    except (ValueError, TypeError):
        raise VectorFailed(key + " is not hex")
    if len(psk) != 32:
        raise VectorFailed(key + "[0] is not 32 bytes")
    return psk


def _noise_role(v, role, make_backend):
    """Plays ``role`` of a standard vector; returns a note or ``None``.
    Raises ``VectorFailed`` with the reason."""
    name = v["protocol_name"]
    psk_pos = parse_suite(name)[0]
    msgs = v.get("messages") or []
    if len(msgs) < 2:
        raise VectorFailed("vector has fewer than the 2 handshake messages")
    notes = []
    b = make_backend()
    if role == "initiator":
        if v.get("init_static") is not None:
            notes.append("init_static ignored: an NK initiator has no static key")
        rs = _h(v, "init_remote_static", False)
        if rs is None:
            rs = b.x25519_base(_h(v, "resp_static"))
            notes.append("init_remote_static derived from resp_static")
        b.fixed_ephemeral_key_for_testing_only = [_h(v, "init_ephemeral")]
        hs = NKInitiator(b, rs, _psk(v, "init", psk_pos), _h(v, "init_prologue", False) or b"",
                         name, VECTOR_MAX_PAYLOAD_BYTES)
    else:
        if v.get("resp_remote_static") is not None:
            notes.append("resp_remote_static ignored: NK has no initiator static key")
        s = _h(v, "resp_static")
        b.fixed_ephemeral_key_for_testing_only = [_h(v, "resp_ephemeral")]
        hs = NKResponder(b, (s, b.x25519_base(s)), _psk(v, "resp", psk_pos),
                         _h(v, "resp_prologue", False) or b"", name, VECTOR_MAX_PAYLOAD_BYTES)
    writes = 0 if role == "initiator" else 1  # message index (mod 2) this role writes
    for i in (0, 1):
        m = msgs[i]
        label = "message " + str(i + 1)
        _noise_limit(label, m)
        if i % 2 == writes:
            _check(label + " ciphertext", hs.write_message(_h(m, "payload")), _h(m, "ciphertext"))
        else:
            try:
                pt = hs.read_message(_h(m, "ciphertext"))
            except RemoteError as e:
                raise VectorFailed(label + " rejected: " + type(e).__name__)
            _check(label + " payload", pt, _h(m, "payload"))
    want_hash = _h(v, "handshake_hash", False)
    if want_hash is None:
        notes.append("no handshake_hash in vector: not checked")
    else:
        _check("handshake hash", hs.handshake_hash, want_hash)
    t = hs.into_transport(rekey_interval=NO_REKEY, max_payload=VECTOR_MAX_TRANSPORT_PAYLOAD_BYTES)
    recv_nonce = 0
    for i in range(2, len(msgs)):
        m = msgs[i]
        label = "message " + str(i + 1)
        _noise_limit(label, m)
        if i % 2 == writes:
            pt = _h(m, "payload")
            out = bytearray(len(pt) + TAG_BYTES)
            t.encrypt_into(b"", 0, pt, 0, len(pt), out, 0)
            _check(label + " ciphertext", out, _h(m, "ciphertext"))
        else:
            ct = _h(m, "ciphertext")
            out = bytearray(max(0, len(ct) - TAG_BYTES))
            try:
                n = t.decrypt_into(recv_nonce, b"", 0, ct, 0, len(ct), out, 0)
            except RemoteError as e:
                raise VectorFailed(label + " rejected: " + type(e).__name__)
            recv_nonce += 1
            _check(label + " payload", out[:n], _h(m, "payload"))
    return "; ".join(notes) if notes else None


def _noise_limit(label, m):
    # Over Noise's own limit the vector is invalid: say so, rather than
    # report our transport's refusal as the message being "rejected".
    for key, extra in (("ciphertext", 0), ("payload", TAG_BYTES)):
        if len(_h(m, key)) + extra > NOISE_MAX_MESSAGE_BYTES:
            raise VectorFailed(label + " is longer than Noise's 65535-byte message limit"
                               " (section 3): invalid vector")


# moteseal's own vectors (``moteseal vectors generate``, docs/conformance.md).

def _ids(v):
    d, p = v.get("device_id"), v.get("peer_id")
    if not d or not p:
        raise VectorFailed("vector lacks device_id or peer_id")
    return d.encode(), p.encode()


def _opts(v):
    return {"window": _int(v, "window"), "rekey_interval": _int(v, "rekey_interval")}


def _envelope_parts(v):
    hs1, hs2 = v.get("hs1"), v.get("hs2")
    if not hs1 or not hs2:
        raise VectorFailed("vector lacks hs1 or hs2")
    return hs1, hs2


def _sends(v, side):
    return [s for s in v.get("sends", []) if s.get("from") == side]


def _check_send(label, s, got):
    env = _h(s, "envelope")
    _check(label + " envelope", got, env)
    ad, ct = _h(s, "ad", False), _h(s, "ciphertext", False)
    if ad is not None and ct is not None:
        _check(label + " ad || ciphertext", ad + ct, env)


def _advance(tr, nonce, send_one, label):
    # Fillers: a sender reaches `nonce` by sealing empty messages it never delivers.
    if tr.send_nonce > nonce:
        raise VectorFailed(label + ": sends are not in nonce order")
    while tr.send_nonce < nonce:
        send_one(b"")


def _decide(label, d, receive):
    """Delivers ``d["envelope"]`` through ``receive`` and compares the outcome
    with ``d["expect"]``."""
    want = d.get("expect")
    env = _h(d, "envelope")
    try:
        kind, payload = receive(env)
    except RemoteError as e:
        kind, payload = type(e).__name__, None
    if kind != want:
        raise VectorFailed(label + ": expected " + str(want) + ", got " + kind)
    if kind == "accept":
        _check(label + " payload", payload, _h(d, "payload"))
    elif kind == "hint":
        _check(label + " hint reply", payload, _h(d, "reply"))


def _moteseal_initiator(v, make_backend):
    name = v["protocol_name"]
    psk_pos = parse_suite(name)[0]
    dev_id, peer_id = _ids(v)
    hs1, hs2 = _envelope_parts(v)
    b = make_backend()
    b.fixed_ephemeral_key_for_testing_only = [_h(v, "init_ephemeral")]
    peer_pub = b.x25519_base(_h(v, "resp_static"))
    _check("peer_static_public", peer_pub, _h(v, "peer_static_public"))
    psk = _h(v, "psk") if psk_pos >= 0 else None
    dev = DeviceSession(b, dev_id, peer_id, peer_pub, psk,
                        Msg1Counter(NonpersistingCounterStore(_int(hs1, "counter"))),
                        name, **_opts(v))
    env1 = dev.handshake(_h(hs1, "payload"))
    _check("hs1 envelope", env1, _h(hs1, "envelope"))
    prologue = _h(hs1, "prologue", False)
    if prologue is not None:
        n = len(env1) - len(_h(hs1, "noise_message"))
        _check("hs1 prologue", E.PROLOGUE + env1[:n], prologue)
    try:
        ev, pt = dev.receive(_h(hs2, "envelope"))
    except RemoteError as e:
        raise VectorFailed("hs2 rejected: " + type(e).__name__)
    if ev != EV_HANDSHAKE:
        raise VectorFailed("hs2 did not finish the handshake")
    _check("hs2 payload", pt, _h(hs2, "payload"))
    _check("handshake hash", dev.transport.handshake_hash, _h(v, "handshake_hash"))
    for s in _sends(v, "initiator"):
        label = "send nonce " + str(_int(s, "nonce"))
        _advance(dev.transport, s["nonce"], dev.send, label)
        _check_send(label, s, dev.send(_h(s, "payload")))

    def receive(env):
        ev, pt = dev.receive(env)
        return ("accept" if ev == EV_DATA else "event " + str(ev)), pt
    _deliveries(v, "initiator", receive)


def _moteseal_responder(v, make_backend):
    name = v["protocol_name"]
    psk_pos = parse_suite(name)[0]
    dev_id, peer_id = _ids(v)
    hs1, hs2 = _envelope_parts(v)
    b = make_backend()
    b.fixed_ephemeral_key_for_testing_only = [_h(v, "resp_ephemeral")]
    s = _h(v, "resp_static")
    directory = NonpersistingDirectory([(s, b.x25519_base(s))])
    if psk_pos >= 0:
        directory.add(dev_id, _h(v, "psk"))
    peer = PeerSessions(b, peer_id, directory, name, **_opts(v))
    try:
        r = peer.receive(_h(hs1, "envelope"))
    except RemoteError as e:
        raise VectorFailed("hs1 rejected: " + type(e).__name__)
    _check("hs1 payload", r.payload, _h(hs1, "payload"))
    _check("hs2 envelope", r.reply, _h(hs2, "envelope"))
    tr = peer.sessions(dev_id)[0][1]
    _check("handshake hash", tr.handshake_hash, _h(v, "handshake_hash"))
    for snd in _sends(v, "responder"):
        label = "send nonce " + str(_int(snd, "nonce"))
        _advance(tr, snd["nonce"], lambda p: peer.send(dev_id, p), label)
        _check_send(label, snd, peer.send(dev_id, _h(snd, "payload")))

    def receive(env):
        r = peer.receive(env)
        if r.kind == "data":
            return "accept", r.payload
        if r.kind == "hint":
            return "hint", r.reply
        return r.kind, r.payload
    _deliveries(v, "responder", receive)


def _deliveries(v, side, receive):
    k = 0
    for d in v.get("deliveries", []):
        k += 1
        if d.get("to") == side:
            _decide("delivery " + str(k), d, receive)


# Running files.

def _role_line(run, args):
    # One role of one vector -> (status, reason); nothing escapes (Rule 1).
    try:
        status, reason = PASS, run(*args)
    except VectorFailed as e:
        status, reason = FAIL, str(e)
    except MotesealError as e:
        status, reason = FAIL, type(e).__name__ + ": " + str(e)
    except Exception as e:  # noqa: BLE001 - a malformed vector must not stop the run
        status, reason = FAIL, "malformed vector (" + type(e).__name__ + ": " + str(e) + ")"
    return status, reason


def run_vectors(doc, make_backend, emit):
    """Runs every vector of a decoded file; returns ``[passed, failed, skipped]``
    and calls ``emit(line)`` once per vector and role."""
    counts = [0, 0, 0]
    if not isinstance(doc, dict) or not isinstance(doc.get("vectors"), list):
        raise ValueError("not a vector file: no \"vectors\" list")
    ours = doc.get("moteseal_vectors")
    if ours is not None and ours != MOTESEAL_FORMAT:
        raise ValueError("moteseal_vectors format " + str(ours) + " is not supported")
    index = 0
    for v in doc["vectors"]:
        index += 1
        if not isinstance(v, dict):
            for role in ROLES:
                counts[1] += 1
                emit(FAIL + " #" + str(index) + " ? " + role + ": malformed vector (not an object)")
            continue
        name = v.get("protocol_name", "?")
        head = "#" + str(index) + " " + str(name)
        if ours is not None:
            head += " " + str(v.get("name", "?"))
        why = unsupported(name, make_backend)
        for role in ROLES:
            if why is not None:
                status, reason = SKIP, why
            elif ours is not None:
                run = _moteseal_initiator if role == "initiator" else _moteseal_responder
                status, reason = _role_line(run, (v, make_backend))
            else:
                status, reason = _role_line(_noise_role, (v, role, make_backend))
            counts[(PASS, FAIL, SKIP).index(status)] += 1
            emit(status + " " + head + " " + role + (": " + reason if reason else ""))
    return counts


def summary(counts):
    return "%d passed, %d failed, %d skipped" % (counts[0], counts[1], counts[2])


def run_paths(paths, make_backend, emit):
    """Runs every file; returns ``(counts, unreadable)`` where ``unreadable``
    lists ``(path, reason)`` of files that could not be read as vector files
    (each also reported through ``emit`` as ``ERROR <path>: <reason>``)."""
    total = [0, 0, 0]
    unreadable = []
    for path in paths:
        if len(paths) > 1:
            emit("file " + path)
        try:
            with open(path) as f:
                doc = json.load(f)
            counts = run_vectors(doc, make_backend, emit)
        except (OSError, ValueError) as e:
            unreadable.append((path, str(e)))
            emit("ERROR " + path + ": " + str(e))
            continue
        for i in range(3):
            total[i] += counts[i]
    return total, unreadable


def default_backend():
    """This interpreter's backend class: ``NaclBackend`` on CPython,
    ``MicroBackend`` on MicroPython."""
    import sys
    if sys.implementation.name == "micropython":
        from micropython_port.backend import MicroBackend
        return MicroBackend
    from moteseal.crypto.backend_nacl import NaclBackend
    return NaclBackend


def main(argv):
    """``micropython -m moteseal.conformance.runner FILE...``: exit 0 if nothing
    failed, 1 on any failure, 2 for no file or an unreadable file."""
    if not argv:
        print("usage: micropython -m moteseal.conformance.runner FILE...")
        return 2
    counts, unreadable = run_paths(argv, default_backend(), print)
    print(summary(counts))
    if unreadable:
        return 2
    return 1 if counts[1] else 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))

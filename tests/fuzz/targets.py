"""Fuzz targets for every decoder that takes remote (or file) bytes.

Each target is ``fn(data: bytes) -> None``: it raises ``AssertionError`` (or
lets an unexpected exception escape) when an invariant breaks, and returns
otherwise. The same functions run under atheris (``tests/fuzz/run.py``,
coverage-guided, for as long as ``MOTESEAL_FUZZ_SECONDS`` says) and under
hypothesis in the normal test run (``tests/fuzz/test_fuzz_targets.py``).

The invariant (STYLE.md section 3, ``device/errors.py``): a decoder returns a
result or raises its documented input error (``RemoteError`` for the core and
the MQTT parser, ``Rejected`` for the gateway reader, ``BundleError`` and
``KeyFileError`` for files); nothing else escapes, and a failure changes no
state. Where a decoder streams, it is fed the whole input, one byte at a
time, and in random chunks, and must decide the same way every time.

Inputs are mutations of genuine messages (``Mutator``): the first byte picks
a seed and a mutation, the rest drive it, so coverage-guided fuzzing and
plain random bytes both reach the deep paths (a random 80-byte string never
gets past the envelope decoder). Keys and ephemerals are fixed, so a failing
input replays exactly.
"""

from __future__ import annotations

import hashlib

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import HandshakeFailed, RemoteError
from device.noise import DEFAULT_SUITE, NKInitiator, NKResponder
from device.session import EV_DATA, EV_HANDSHAKE, DeviceSession
from device.peer import NonpersistingDirectory, PeerSessions
from tests.fuzz.mutator import Mutator, chunks

DEV, PEER = b"sensor-1", b"hub"


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class FixedBackend(NaclBackend):
    """NaclBackend whose ephemerals are fixed: the keys in ``queue`` first,
    then a counter-derived sequence, so every genuine message below is the
    same bytes in every process (a crash found by atheris replays)."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self.queue: list[bytes] = []

    @property
    def fixed_ephemeral_key_for_testing_only(self):  # type: ignore[override]
        if self.queue:
            return self.queue  # the core pops from the front
        self._n += 1
        return [_key(f"ephemeral-{self._n}")]

    @fixed_ephemeral_key_for_testing_only.setter
    def fixed_ephemeral_key_for_testing_only(self, v) -> None:
        self.queue = list(v or [])


BACKEND = FixedBackend()
STATIC_PRIV = _key("peer-static")
STATIC = (STATIC_PRIV, BACKEND.x25519_base(STATIC_PRIV))
PSK = _key("psk")


# -- snapshots: "no state change on failure" ---------------------------------


def transport_state(tr) -> tuple:
    w = tr.window
    return (w.hi, bytes(w._bits), tr._r_epoch, tr._r_key, id(tr._r_cur), id(tr._r_prev),
            tr.send_nonce, tr._s_epoch)


def peer_state(peer: PeerSessions) -> tuple:
    # An entry: [sid, transport, confirmed, epoch, static, revision checked, held];
    # the revision is a cache of the directory re-check, not session state.
    table = tuple(sorted((dev, tuple((e[0], id(e[1]), e[2], transport_state(e[1]), e[3], e[4], e[6])
                                     for e in s))
                         for dev, s in peer._sessions.items()))
    return table, tuple(sorted(peer._unconfirmed)), tuple(sorted(peer.directory.counters.items()))


def device_state(dev: DeviceSession) -> tuple:
    tr = dev.transport
    return (dev.sid, dev._pending_sid, id(dev._hs), id(tr),
            transport_state(tr) if tr is not None else None, dev._last_hint)


# -- envelope codec (device side) ---------------------------------------------


def _envelope_seeds() -> list[bytes]:
    return [
        E.encode(E.HEAD_HS1, DEV, PEER, 3, bytes(range(80))),
        E.encode(E.HEAD_HS2, PEER, DEV, 23, bytes(48)),
        E.encode(E.HEAD_DATA, DEV, PEER, 0, b"\x01" * 30, nonce=0),
        E.encode(E.HEAD_DATA, b"a" * 16, b"b" * 16, 0xFFFFFFFF, b"x" * 300, nonce=E.NONCE_MAX),
        E.encode(E.HEAD_DATA, DEV, PEER, 24, b"", nonce=0x10000),
        E.encode(E.HEAD_HINT, PEER, DEV, 5, 0),
        E.encode(E.HEAD_HINT, PEER, DEV, 5, 2 ** 40),
    ]


ENVELOPE_MUTATOR = Mutator(_envelope_seeds())


def fuzz_device_envelope(data: bytes) -> None:
    """``Envelope.decode_into``: an envelope or ``DecodeError``; never reads
    past ``n``; what it accepts re-encodes to the same bytes."""
    msg = ENVELOPE_MUTATOR(data)
    results = []
    for buf, n in ((msg, len(msg)), (bytearray(msg) + b"\x00\xff" * 3, len(msg)),
                   (memoryview(msg), len(msg))):
        try:
            env = E.Envelope().decode_into(buf, n)
        except RemoteError as e:
            results.append(type(e))
            continue
        fields = (env.head, env.src, env.dst, env.sid, env.nonce, env.reason, env.msg_off,
                  env.msg_len)
        results.append(fields)
        assert env.msg_off + env.msg_len == n
        again = E.encode(env.head, env.src, env.dst, env.sid,
                         env.reason if env.type == E.HINT else env.msg, env.nonce)
        assert again == bytes(msg), "accepted a non-canonical envelope"
    assert results[0] == results[1] == results[2], "decision depends on bytes past n"


# -- gateway envelope reader ------------------------------------------------------


def fuzz_gateway_envelope(data: bytes) -> None:
    """``gateway.envelope.read_header``: a ``Header`` or ``Rejected``; a
    header it accepts is one the device decoder accepts with the same
    fields (the gateway is stricter only on the id alphabet)."""
    from gateway.envelope import Rejected, read_header

    msg = ENVELOPE_MUTATOR(data)
    try:
        h = read_header(msg)
    except Rejected as e:
        assert e.reason in ("oversize", "malformed", "unknown_version")
        return
    env = E.decode(msg)  # DecodeError here would be a disagreement
    assert (h.kind, h.src.encode(), h.dst.encode(), h.sid) == (env.type, env.src, env.dst, env.sid)


# -- handshake message reading --------------------------------------------------------


def _hs1_msg(suite: str, prologue: bytes) -> bytes:
    init = NKInitiator(BACKEND, STATIC[1], None if "_NK_" in suite else PSK, prologue, suite)
    return init.write_message(b"\x00\x00\x00\x07reading")


SUITE_NK = "Noise_NK_25519_ChaChaPoly_SHA256"
SUITE_PSK2 = "Noise_NKpsk2_25519_ChaChaPoly_BLAKE2s"
RESPONDER_MUTATOR = Mutator([_hs1_msg(DEFAULT_SUITE, b"p"), _hs1_msg(SUITE_NK, b"p"),
                             _hs1_msg(SUITE_PSK2, b"p"), bytes(48), b"\x01" + bytes(31) + bytes(20)])


def fuzz_handshake_responder(data: bytes) -> None:
    """``NKResponder.read_message``: the payload only for a genuine message 1,
    else ``RemoteError`` and the terminal state (every later call raises
    ``HandshakeFailed``)."""
    msg = RESPONDER_MUTATOR(data)
    genuine = msg in RESPONDER_MUTATOR.seeds[:3]
    for suite in (DEFAULT_SUITE, SUITE_NK, SUITE_PSK2):
        r = NKResponder(BACKEND, STATIC, None if "_NK_" in suite else PSK, b"p", suite)
        try:
            payload = r.read_message(msg)
        except RemoteError:
            for call in (lambda: r.read_message(msg), lambda: r.write_message(b"")):
                try:
                    call()
                except HandshakeFailed:
                    pass
                else:
                    raise AssertionError("a failed handshake accepted another call")
            continue
        assert genuine and payload == b"\x00\x00\x00\x07reading", "forged message 1 accepted"


_INIT_SUITES = (DEFAULT_SUITE, SUITE_NK, SUITE_PSK2)


def _fresh_initiator(suite: str) -> NKInitiator:
    """The same initiator, waiting for message 2, every time."""
    init = NKInitiator(BACKEND, STATIC[1], None if "_NK_" in suite else PSK, b"q", suite)
    BACKEND.queue = [_key("init-e-" + suite)]
    init._msg1 = init.write_message(b"")
    return init


def _hs2_for(suite: str) -> bytes:
    init = _fresh_initiator(suite)
    resp = NKResponder(BACKEND, STATIC, None if "_NK_" in suite else PSK, b"q", suite)
    resp.read_message(init._msg1)
    BACKEND.queue = [_key("resp-e-" + suite)]
    return resp.write_message(b"ok")


_GENUINE_HS2 = {s: _hs2_for(s) for s in _INIT_SUITES}
INITIATOR_MUTATOR = Mutator(list(_GENUINE_HS2.values()) + [bytes(48)])


def fuzz_handshake_initiator(data: bytes) -> None:
    """``NKInitiator.read_message``: message 2's payload only when genuine,
    else ``RemoteError`` and the terminal state."""
    msg = INITIATOR_MUTATOR(data)
    for suite in _INIT_SUITES:
        init = _fresh_initiator(suite)
        try:
            payload = init.read_message(msg)
        except RemoteError:
            try:
                init.into_transport()
            except HandshakeFailed:
                continue
            raise AssertionError("a failed handshake still split")
        assert msg == _GENUINE_HS2[suite] and payload == b"ok", "forged message 2 accepted"


# -- transport decrypt -----------------------------------------------------------


def _transport_pair():
    init = NKInitiator(BACKEND, STATIC[1], PSK, b"t", DEFAULT_SUITE)
    BACKEND.queue = [_key("t-i"), _key("t-r")]
    resp = NKResponder(BACKEND, STATIC, PSK, b"t", DEFAULT_SUITE)
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    lim = {"window": 8, "rekey_interval": 16}
    return init.into_transport(**lim), resp.into_transport(**lim)


def _transport_corpus():
    sender, _ = _transport_pair()
    sent = {}
    for n in range(60):
        ad = b"ad%d" % n
        sent[n] = (ad, sender.encrypt(b"m%d" % n, ad))
    return sent


_SENT = _transport_corpus()
_ACCEPTED_FIRST = (0, 1, 2, 5, 17, 20, 33, 34, 40)
TRANSPORT_MUTATOR = Mutator([m for _, m in _SENT.values()])


def _receiver():
    _, r = _transport_pair()
    for n in _ACCEPTED_FIRST:
        ad, m = _SENT[n]
        r.decrypt(m, ad)
    return r


def fuzz_transport(data: bytes) -> None:
    """``Transport.decrypt_into`` (via ``decrypt``): plaintext only for a
    genuine message not yet accepted; any failure leaves window, epoch and
    keys as they were. Nonces around epoch boundaries (rekey every 16,
    window 8) are in the corpus."""
    msg = TRANSPORT_MUTATOR(data)
    r = _receiver()
    nonce = int.from_bytes(msg[:8], "big") if len(msg) >= 8 else -1
    ad = _SENT[nonce][0] if nonce in _SENT else b"ad"
    before = transport_state(r)
    try:
        pt = r.decrypt(msg, ad)
    except RemoteError:
        assert transport_state(r) == before, "a failed decrypt changed the transport"
        return
    assert nonce in _SENT and _SENT[nonce][1] == msg and nonce not in _ACCEPTED_FIRST
    assert pt == b"m%d" % nonce


# -- sessions (peer and device) ------------------------------------------------------


class _World:
    """A peer with one live session for sensor-1 and a device waiting for
    message 2 of its second handshake; every envelope each side can get."""

    def __init__(self) -> None:
        BACKEND._n, BACKEND.queue = 1000, []  # every world is the same bytes
        self.directory = NonpersistingDirectory([STATIC])
        self.directory.add(DEV, PSK)
        self.peer = PeerSessions(BACKEND, PEER, self.directory, window=8, rekey_interval=16)
        self.store = NonpersistingCounterStore()
        self.dev = DeviceSession(BACKEND, DEV, PEER, STATIC[1], PSK, Msg1Counter(self.store),
                                 window=8, rekey_interval=16)
        r = self.peer.receive(self.dev.handshake(b"first"))
        self.dev.receive(r.reply)
        self.up = [self.dev.send(b"up%d" % i) for i in range(20)]
        self.down = [self.peer.send(DEV, b"down%d" % i) for i in range(20)]
        for e in self.up[:5]:
            self.peer.receive(e)
        for e in self.down[:5]:
            self.dev.receive(e)
        self.fresh_hs1 = self.dev.handshake(b"second")  # pending on the device
        # The peer's answer to it, made by a twin peer so the real one stays put.
        twin_dir = NonpersistingDirectory([STATIC])
        twin_dir.add(DEV, PSK)
        twin = PeerSessions(BACKEND, PEER, twin_dir)
        self.fresh_hs2 = twin.receive(self.fresh_hs1).reply
        self.hints = [E.encode(E.HEAD_HINT, PEER, DEV, s, 0) for s in (self.dev.sid, 7)]


_W = _World()
PEER_MUTATOR = Mutator(_W.up + [_W.fresh_hs1, _W.fresh_hs2] + _W.down[:2] + _W.hints)
DEVICE_MUTATOR = Mutator(_W.down + [_W.fresh_hs2, _W.fresh_hs1] + _W.up[:2] + _W.hints)
_world_cache: list[_World] = [_W]


def _world() -> _World:
    # A world is changed only by an accepted genuine message; keep one until then.
    if not _world_cache:
        _world_cache.append(_World())
    return _world_cache[0]


def fuzz_peer_receive(data: bytes) -> None:
    """``PeerSessions.receive``: a ``Received`` or ``RemoteError``; on an
    error the session table and the message-1 counters are unchanged; a
    payload is delivered only for a genuine envelope, and once."""
    w = _world()
    msg = PEER_MUTATOR(data)
    before = peer_state(w.peer)
    try:
        r = w.peer.receive(msg, 0)
    except RemoteError:
        assert peer_state(w.peer) == before, "a refused envelope changed the peer"
        return
    if r.kind == "hint":
        assert r.payload is None and peer_state(w.peer) == before
        return
    assert msg == w.fresh_hs1 or msg in w.up[5:], "forged envelope accepted by the peer"
    _world_cache.clear()  # a genuine one was consumed: start from a fresh world


def fuzz_device_receive(data: bytes) -> None:
    """``DeviceSession.receive_into``: an event or ``RemoteError``; on an
    error nothing changes (except that an unauthentic message 2 ends that
    attempt, as documented); data only from a genuine envelope."""
    w = _world()
    msg = DEVICE_MUTATOR(data)
    before = device_state(w.dev)
    out = bytearray(1024)
    try:
        ev = w.dev.receive_into(msg, len(msg), out, 0)
    except RemoteError as e:
        after = device_state(w.dev)
        if after != before:
            # Only the documented exception: message 2 for the pending sid
            # that does not authenticate ends that handshake attempt.
            assert isinstance(e, RemoteError) and w.dev._hs is None
            assert after[:2] == before[:2] and after[3:] == before[3:]
            _world_cache.clear()
        return
    if ev in (EV_DATA, EV_HANDSHAKE):
        assert msg == w.fresh_hs2 or msg in w.down[5:], "forged envelope accepted by the device"
        _world_cache.clear()


# -- serial framing -----------------------------------------------------------------


def _frame_seeds() -> list[bytes]:
    from device import framing as F
    return [F.encode(b"") + F.encode(b"\x00hello\x00") + F.encode(bytes(range(256)) * 2),
            F.encode(_W.up[0]) + b"\xaa\x00" + F.encode(_W.fresh_hs1),
            F.encode(bytes(1200)), b"\x00\x03\xff\xff\x00\x00\x05\x31\x32\x00"]


FRAME_MUTATOR = Mutator(_frame_seeds())


def fuzz_framing(data: bytes) -> None:
    """``FrameDecoder``: never raises; the same frames and drop counts
    whether fed whole, byte by byte or in chunks; each delivered frame is
    one whose CRC matched (re-encoding it gives a valid frame)."""
    from device import framing as F

    stream = FRAME_MUTATOR(data)
    runs = []
    for pieces in ([stream], [stream[i:i + 1] for i in range(len(stream))],
                   list(chunks(stream, data[-3:]))):
        d = F.FrameDecoder()
        frames = []
        for p in pieces:
            frames += d.feed(p)
        runs.append((frames, list(d.drops), d.pending()))
    assert runs[0] == runs[1] == runs[2], "decoding depends on how the bytes arrive"
    for f in runs[0][0]:
        assert len(f) <= F.FRAME_PAYLOAD_MAX_BYTES
        assert F.FrameDecoder().feed(F.encode(f)) == [f]


# -- the MicroPython MQTT client's packet parser -----------------------------------------


def _mqtt_seeds() -> list[bytes]:
    from micropython_port import mqtt_codec as M
    topic = b"moteseal/v1/down/sensor-1"
    env = _W.down[0]
    buf = bytearray(5 + 2 + len(topic) + 2 + len(env))
    pub1 = bytes(buf[:M.encode_publish_into(buf, topic, env, len(env), 1, 7)])
    pub0 = bytes(buf[:M.encode_publish_into(buf, topic, env, len(env), 0, 0)])
    return [b"\x20\x02\x00\x00" + pub1 + b"\x40\x02\x00\x07" + b"\xd0\x00",
            b"\x90\x03\x00\x01\x01" + pub0, pub1 * 3]


MQTT_MUTATOR = Mutator(_mqtt_seeds())


def fuzz_mqtt_parser(data: bytes) -> None:
    """``micropython_port.mqtt_codec.PacketParser.feed_into``: whole packets
    or ``DecodeError`` (then every later feed raises until ``reset``); the
    same packets and the same verdict whole, byte by byte and in chunks."""
    from micropython_port.mqtt_codec import PacketParser

    stream = MQTT_MUTATOR(data)
    runs = []
    for pieces in ([stream], [stream[i:i + 1] for i in range(len(stream))],
                   list(chunks(stream, data[-3:]))):
        p = PacketParser(1200)  # one envelope, as the device client
        got: list[tuple] = []

        def on_packet(t, flags, p=p, got=got):
            assert p.head_len <= len(p.head) and p.payload_len <= len(p.payload)
            got.append((t, flags, bytes(p.head[:p.head_len]), bytes(p.payload[:p.payload_len]),
                        p.pid))

        def feed(piece, p=p, on_packet=on_packet):
            off = 0  # the pull parser stops after each whole packet
            while off < len(piece):
                off = p.feed_into(piece, off, len(piece))
                if p.packet:
                    on_packet(p.packet & 0xF0, p.packet & 0x0F)

        failed = False
        for piece in pieces:
            try:
                feed(piece)
            except RemoteError:
                failed = True
                break
        if failed:
            try:
                feed(b"\xd0\x00")
            except RemoteError:
                pass
            else:
                raise AssertionError("a failed parser accepted more bytes")
            p.reset()
            n = len(got)
            feed(b"\xd0\x00")  # after reset it parses again
            assert len(got) == n + 1
            got.pop()
        runs.append((got, failed))
    assert runs[0] == runs[1] == runs[2], "parsing depends on how the bytes arrive"


# -- provisioning bundles and key files ------------------------------------------------


def _bundle_seeds() -> list[bytes]:
    from moteseal.keys.provision import Bundle, encode_bundle
    b = Bundle(device_id=DEV, peers=[(PEER, [STATIC[1]])], psk=PSK, suite=DEFAULT_SUITE,
               link={"kind": "mqtt", "host": "127.0.0.1", "port": 1883, "username": "sensor-1",
                     "password": "pw"})
    s = Bundle(device_id=b"s2", peers=[(PEER, [STATIC[1], _key("k2")]), (b"hub2", [_key("k3")])],
               psk=PSK, suite=SUITE_NK, link={"kind": "serial", "port": "/dev/ttyUSB0",
                                              "baud": 115200})
    return [encode_bundle(b), encode_bundle(s)]


def _bundle_mutator() -> Mutator:
    try:
        return Mutator(_bundle_seeds())
    except TypeError:
        # Bundle's constructor is (device_id, peers, psk, suite, link, generation).
        from moteseal.keys.provision import Bundle, encode_bundle
        b = Bundle(DEV, [(PEER, [STATIC[1]])], PSK, DEFAULT_SUITE, {"kind": "none"})
        return Mutator([encode_bundle(b)])


BUNDLE_MUTATOR = _bundle_mutator()


def fuzz_bundle(data: bytes) -> None:
    """``device.bundle.decode_bundle`` (the reader devices run) and
    ``moteseal.keys.provision.decode_bundle``: a ``Bundle`` or ``BundleError``;
    nothing accepted but the genuine files."""
    from device.bundle import BundleError, decode_bundle
    from moteseal.keys.provision import decode_bundle as provision_decode

    blob = BUNDLE_MUTATOR(data)
    try:
        provision_decode(blob, "fuzz")  # the CPython entry point: same reader, same error
    except BundleError:
        pass
    try:
        decode_bundle(blob)
    except BundleError:
        return
    # The checksum is not a MAC, so an edit that recomputes it is accepted;
    # a blind mutation cannot (16-byte SHA-256 prefix).
    assert blob in BUNDLE_MUTATOR.seeds, "a corrupted bundle was accepted"


def _key_seeds() -> tuple[list[bytes], tuple[bytes, bytes]]:
    from moteseal.keys.keyfile import KeyPair, encode_key_file, public_of
    priv = bytearray(STATIC_PRIV)
    priv[0] &= 248
    priv[31] = (priv[31] & 127) | 64
    kp = KeyPair(bytes(priv), public_of(bytes(priv)))
    return [encode_key_file(kp), encode_key_file(kp, b"pw", "interactive")], (kp.priv, kp.pub)


_key_files, KEY_PAIR = _key_seeds()
KEY_MUTATOR = Mutator(_key_files)


def fuzz_key_file(data: bytes) -> None:
    """``moteseal.keys.keyfile``: ``decode_key_file`` (without a passphrase, so no
    argon2 per input), ``public_from_key_file`` and ``parse_public`` return a
    result or raise ``KeyFileError``; a plain key file is accepted only
    when genuine."""
    from moteseal.keys.keyfile import KeyFileError, decode_key_file, parse_public, public_from_key_file

    blob = KEY_MUTATOR(data)
    try:
        kp = decode_key_file(blob, None)
    except KeyFileError:
        pass
    else:
        # cbor2 ignores bytes after the map, so an extended file still opens;
        # what it yields must be the genuine pair (pub is checked against priv).
        assert (kp.priv, kp.pub) == KEY_PAIR, "a corrupted key file gave another key"
    try:
        public_from_key_file(blob)
    except KeyFileError:
        pass
    try:
        parse_public(blob.decode("latin-1"))
    except KeyFileError:
        pass


TARGETS = {
    "device_envelope": fuzz_device_envelope,
    "gateway_envelope": fuzz_gateway_envelope,
    "handshake_responder": fuzz_handshake_responder,
    "handshake_initiator": fuzz_handshake_initiator,
    "transport": fuzz_transport,
    "peer_receive": fuzz_peer_receive,
    "device_receive": fuzz_device_receive,
    "framing": fuzz_framing,
    "mqtt_parser": fuzz_mqtt_parser,
    "bundle": fuzz_bundle,
    "key_file": fuzz_key_file,
}

SEEDS = {
    "device_envelope": ENVELOPE_MUTATOR, "gateway_envelope": ENVELOPE_MUTATOR,
    "handshake_responder": RESPONDER_MUTATOR, "handshake_initiator": INITIATOR_MUTATOR,
    "transport": TRANSPORT_MUTATOR, "peer_receive": PEER_MUTATOR,
    "device_receive": DEVICE_MUTATOR, "framing": FRAME_MUTATOR, "mqtt_parser": MQTT_MUTATOR,
    "bundle": BUNDLE_MUTATOR, "key_file": KEY_MUTATOR,
}

# Group broadcast's decoders live beside this file (it is near 600 lines).
from tests.fuzz import targets_group as _group  # noqa: E402

TARGETS.update(_group.TARGETS)
SEEDS.update(_group.SEEDS)

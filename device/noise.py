"""Noise NK handshakes (Noise Protocol Framework, revision 34).

Suites: ``Noise_NK``, ``Noise_NKpsk0`` and ``Noise_NKpsk2``, each with
``25519_ChaChaPoly_SHA256`` or ``25519_ChaChaPoly_BLAKE2s``.

Invariants:
- Rule 1: this module does no I/O, reads no clock and draws randomness only
  through ``backend.random_bytes`` (or the test hook
  ``backend.fixed_ephemeral_key_for_testing_only``).
- Rule 2: a handshake object moves forward only: write/read message 1, then
  read/write message 2, then ``into_transport()`` hands its split keys to a
  new ``Transport`` and the handshake object is spent. A call out of turn is
  a ``LocalError``.
- Rule 3: failure is final. Any error while reading a message moves the
  handshake to its terminal state; every later call raises
  ``HandshakeFailed``. Nothing is returned from a message that did not
  authenticate.
- Rule 4: every DH output is checked; an all-zero output (a low-order public
  key, RFC 7748 section 6.1) raises ``AuthError``, like a bad tag.
"""

from device import errors
from device.backend import ct_equal, is_all_zero  # noqa: F401 (ct_equal: re-exported)
# One direction only (transport imports nothing from here): a handshake yields a
# Transport, and the AEAD constants live with the phase that uses them most.
from device.transport import MAX_PAYLOAD_BYTES, TAG_BYTES, Transport  # noqa: F401 (re-exported)

# No ``__all__``: the package ``__init__`` is the public surface (STYLE.md
# section 6), and a tuple of names here would cost devices heap.

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

DHLEN_BYTES = const(32)
PSK_BYTES = const(32)
NOISE_MAX_BYTES = const(65535)  # Noise section 3: every message <= 65535 bytes

DEFAULT_SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
SUITES = (
    "Noise_NK_25519_ChaChaPoly_SHA256",
    "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
    "Noise_NKpsk2_25519_ChaChaPoly_SHA256",
    "Noise_NK_25519_ChaChaPoly_BLAKE2s",
    "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s",
    "Noise_NKpsk2_25519_ChaChaPoly_BLAKE2s",
)

_MAXNONCE = const(0xFFFFFFFFFFFFFFFF)


def parse_suite(name):
    """Return ``(psk_position, hash_name)`` for a supported suite name;
    ``psk_position`` is -1 for plain NK. Raises ``LocalError`` otherwise."""
    if name not in SUITES:
        raise errors.LocalError("unsupported suite " + str(name))
    parts = name.split("_")
    pattern = parts[1]
    psk = -1 if pattern == "NK" else int(pattern[5:])
    return psk, parts[4]


class CipherState:
    """Noise section 5.1: a key (or none) and a 64-bit nonce."""

    def __init__(self, backend):
        self._backend = backend
        self.k = None
        self._c = None
        self.n = 0

    def initialize_key(self, k):
        # The cipher object is made on first use: most handshake keys are
        # replaced by the next MixKey before they encrypt anything.
        self.k = k
        self._c = None
        self.n = 0

    def has_key(self):
        return self.k is not None

    def encrypt_with_ad(self, ad, plaintext):
        if self.k is None:
            return bytes(plaintext)
        if self._c is None:
            self._c = self._backend.cipher(self.k)
        if self.n >= _MAXNONCE:
            raise errors.LocalError("nonce exhausted")
        out = bytearray(len(plaintext) + TAG_BYTES)
        self._c.encrypt_into(self.n, ad, len(ad), plaintext, 0, len(plaintext), out, 0)
        self.n += 1
        return bytes(out)

    def decrypt_with_ad(self, ad, ciphertext):
        """Raises ``AuthError``; the nonce advances only on success."""
        if self.k is None:
            return bytes(ciphertext)
        if self._c is None:
            self._c = self._backend.cipher(self.k)
        if len(ciphertext) < TAG_BYTES:
            raise errors.AuthError("message does not authenticate")
        out = bytearray(len(ciphertext) - TAG_BYTES)
        self._c.decrypt_into(self.n, ad, len(ad), ciphertext, 0, len(ciphertext), out, 0)
        self.n += 1
        return bytes(out)


class SymmetricState:
    """Noise section 5.2: chaining key ``ck``, handshake hash ``h``, and a
    ``CipherState``."""

    def __init__(self, backend, protocol_name, hash_name):
        self._hash = backend.hash(hash_name)
        name = protocol_name.encode()
        if len(name) <= self._hash.HASHLEN:
            self.h = name + bytes(self._hash.HASHLEN - len(name))
        else:
            self.h = self._hash.digest(name)
        self.ck = self.h
        self.cs = CipherState(backend)

    def _hkdf(self, ikm, outputs):
        # Noise section 4.3: HKDF with HMAC-HASH, 2 or 3 outputs. bytes([i]) is
        # byte(i), built per call: a constant b"\x01" would stay on the heap.
        hm = self._hash.hmac
        temp = hm(self.ck, ikm)
        o1 = hm(temp, bytes([1]))
        o2 = hm(temp, o1 + bytes([2]))
        if outputs == 2:
            return o1, o2, None
        return o1, o2, hm(temp, o2 + bytes([3]))

    def mix_key(self, ikm):
        self.ck, temp_k, _ = self._hkdf(ikm, 2)
        self.cs.initialize_key(temp_k[:32])

    def mix_hash(self, data):
        self.h = self._hash.digest(self.h + data)

    def mix_key_and_hash(self, ikm):
        self.ck, temp_h, temp_k = self._hkdf(ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k[:32])

    def encrypt_and_hash(self, plaintext):
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext):
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self):
        k1, k2, _ = self._hkdf(b"", 2)
        return k1[:32], k2[:32]


def dh(backend, priv, pub):
    """DH(priv, pub) with the low-order check (Rule 4)."""
    out = backend.x25519(priv, pub)
    if is_all_zero(out):
        raise errors.AuthError("message does not authenticate")
    return out


# Handshake steps (Rule 2).
_W1 = const(0)  # next: message 1
_R2 = const(1)  # next: message 2
_DONE = const(2)
_FAILED = const(3)


class _Handshake:
    # ``_rs`` is the responder's static public key (the initiator's ``<- s``
    # pre-message); a responder holds None there: NK never sends the
    # initiator's static key, so that is also how a handshake knows its role.

    def __init__(self, backend, suite, psk, prologue, max_payload, rs, s_pub):
        self._backend = backend
        self.suite = suite
        self._psk_pos, hash_name = parse_suite(suite)
        if self._psk_pos < 0:
            if psk is not None:
                raise errors.LocalError("plain NK takes no PSK")
        elif psk is None or len(psk) != PSK_BYTES:
            raise errors.LocalError("this suite needs a 32-byte PSK")
        self._psk = psk
        self._max_payload = max_payload
        self._rs = rs
        self._ss = SymmetricState(backend, suite, hash_name)
        self._ss.mix_hash(prologue)
        self._ss.mix_hash(s_pub)  # pre-message: <- s
        self._e = None
        self._re = None
        self._step = _W1 if rs is not None else _R2  # a responder reads message 1 first

    @property
    def handshake_hash(self):
        """Noise section 5.3 GetHandshakeHash(); final once the handshake is done."""
        return self._ss.h

    def _expect(self, step):
        if self._step == _FAILED:
            raise errors.HandshakeFailed("handshake failed earlier")
        if self._step != step:
            raise errors.LocalError("handshake message out of turn")

    def _read_e(self, msg):
        # Also bounds the whole message: at least e, at most Noise's 65535
        # bytes (section 3) and e + our payload bound + tag. A read error is
        # final either way (Rule 3).
        n = len(msg)
        if n < DHLEN_BYTES or n > NOISE_MAX_BYTES or \
                n - DHLEN_BYTES > self._max_payload + TAG_BYTES:
            raise errors.DecodeError("bad handshake message length")
        re = bytes(msg[:DHLEN_BYTES])
        self._ss.mix_hash(re)
        if self._psk_pos >= 0:
            self._ss.mix_key(re)  # Noise section 9.2: psk modes mix e into the key
        self._re = re

    def _write_e(self):
        b = self._backend
        fixed = getattr(b, "fixed_ephemeral_key_for_testing_only", None)
        priv = fixed.pop(0) if fixed else b.random_bytes(32)
        pub = b.x25519_base(priv)
        self._e = (priv, pub)
        self._ss.mix_hash(pub)
        if self._psk_pos >= 0:
            self._ss.mix_key(pub)
        return pub

    def into_transport(self, **limits):
        """The finished handshake's ``Transport`` (Noise section 5.2 Split:
        the initiator sends with the first key, the responder with the
        second). Raises ``LocalError`` before the handshake is done, and
        ``HandshakeFailed`` on a second call (the keys are spent)."""
        self._expect(_DONE)
        k1, k2 = self._ss.split()
        self._ss.cs = None  # its key is spent; freed before the transport's two ciphers
        self._step = _FAILED  # spent: a second into_transport() would reuse keys
        if self._rs is None:
            k1, k2 = k2, k1
        return Transport(self._backend, k1, k2, self._rs, self._ss.h, **limits)


class NKInitiator(_Handshake):
    """The device side of NK (Noise section 7.4): it knows the responder's
    static key ``remote_static`` before the handshake (``<- s``). Not
    shareable between threads: one handshake, one caller.

    ``write_message(payload)`` -> message 1 (``-> [psk,] e, es``), whose
    payload travels 0-RTT; ``read_message(msg)`` reads message 2
    (``<- e, ee [, psk]``) and returns its payload; ``into_transport()``.
    """

    def __init__(self, backend, remote_static, psk=None, prologue=b"",
                 suite=DEFAULT_SUITE, max_payload=MAX_PAYLOAD_BYTES):
        if len(remote_static) != DHLEN_BYTES:
            raise errors.LocalError("remote_static must be 32 bytes")
        rs = bytes(remote_static)
        _Handshake.__init__(self, backend, suite, psk, prologue, max_payload, rs, rs)

    def write_message(self, payload=b""):
        """Message 1. Raises ``LocalError`` (out of turn, payload too large)."""
        self._expect(_W1)
        if len(payload) > self._max_payload:
            raise errors.MessageTooLarge("payload exceeds max_payload")
        ss = self._ss
        if self._psk_pos == 0:
            ss.mix_key_and_hash(self._psk)  # psk
        e = self._write_e()  # e
        ss.mix_key(dh(self._backend, self._e[0], self._rs))  # es: MixKey(DH(e, rs))
        out = e + ss.encrypt_and_hash(payload)
        self._step = _R2
        return out

    def read_message(self, msg):
        """Message 2 -> its payload. Raises ``DecodeError`` or ``AuthError``
        and moves to the terminal state (Rule 3)."""
        self._expect(_R2)
        try:
            ss = self._ss
            self._read_e(msg)  # e
            ss.mix_key(dh(self._backend, self._e[0], self._re))  # ee: MixKey(DH(e, re))
            if self._psk_pos == 2:
                ss.mix_key_and_hash(self._psk)  # psk
            payload = ss.decrypt_and_hash(msg[DHLEN_BYTES:])
        except Exception:
            self._step = _FAILED
            raise
        self._step = _DONE
        return payload


class NKResponder(_Handshake):
    """The peer side of NK: holds ``static = (priv, pub)``. Not shareable
    between threads: one handshake, one caller.

    ``read_message(msg)`` reads message 1 and returns its payload;
    ``write_message(payload)`` -> message 2; ``into_transport()``.
    """

    def __init__(self, backend, static, psk=None, prologue=b"",
                 suite=DEFAULT_SUITE, max_payload=MAX_PAYLOAD_BYTES):
        priv, pub = static
        if len(priv) != DHLEN_BYTES or len(pub) != DHLEN_BYTES:
            raise errors.LocalError("static key must be 32 bytes")
        # NK: the initiator is anonymous to Noise (the PSK authenticates it).
        _Handshake.__init__(self, backend, suite, psk, prologue, max_payload, None, bytes(pub))
        self._s = (bytes(priv), bytes(pub))

    def read_message(self, msg):
        """Message 1 -> its payload. Raises ``DecodeError`` or ``AuthError``
        and moves to the terminal state (Rule 3)."""
        self._expect(_R2)
        try:
            ss = self._ss
            if self._psk_pos == 0:
                ss.mix_key_and_hash(self._psk)  # psk
            self._read_e(msg)  # e
            ss.mix_key(dh(self._backend, self._s[0], self._re))  # es: MixKey(DH(s, re))
            payload = ss.decrypt_and_hash(msg[DHLEN_BYTES:])
        except Exception:
            self._step = _FAILED
            raise
        self._step = _W1
        return payload

    def write_message(self, payload=b""):
        """Message 2. Raises ``LocalError`` (out of turn, payload too large)."""
        self._expect(_W1)
        if len(payload) > self._max_payload:
            raise errors.MessageTooLarge("payload exceeds max_payload")
        ss = self._ss
        e = self._write_e()  # e
        ss.mix_key(dh(self._backend, self._e[0], self._re))  # ee: MixKey(DH(e, re))
        if self._psk_pos == 2:
            ss.mix_key_and_hash(self._psk)  # psk
        out = e + ss.encrypt_and_hash(payload)
        self._step = _DONE
        return out


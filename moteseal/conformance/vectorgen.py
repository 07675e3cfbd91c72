"""``moteseal vectors generate``: moteseal's own transport-phase vectors
(CPython). Format: docs/conformance.md, "moteseal transport vectors".

The standard Noise vector format stops at implicit, in-order nonces. These
vectors add what moteseal puts on the wire and what a receiver must decide:
whole envelopes with their routing header, explicit nonces, reordering inside
the replay window, duplicates and too-old messages, rekey boundaries, and
tampered envelopes, each delivery with its expected outcome.

Invariants:
- Rule 1: deterministic. Keys, ephemerals, PSKs, counters and payloads are
  fixed (keys are SHA-256 of a label), so two runs write identical files.
- Rule 2: the bytes come from moteseal (``DeviceSession``, ``PeerSessions``),
  but the expected decisions do not: plain deliveries are decided by
  ``WindowModel``, a set-based restatement of docs/protocol.md "Transport",
  and tampered ones are written down by hand from docs/protocol.md "Errors".
  ``moteseal vectors generate`` then runs the file through
  ``moteseal.conformance.runner`` and writes nothing if moteseal disagrees.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.session import SESSION_SUITES as SUITES
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import DeviceSession
from device.transport import MAX_EPOCH_SKIP

FORMAT = 1
DEVICE_ID = "sensor-7"
PEER_ID = "hub1"
PSK_SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"

Delivery = dict[str, Any]


def _key(label: str) -> bytes:
    return hashlib.sha256(b"moteseal test vector key: " + label.encode()).digest()


def _payload(direction: str, nonce: int) -> bytes:
    return f"{direction} message {nonce}".encode()


class WindowModel:
    """What a receiver must decide for a genuine message with nonce ``n``,
    restated from docs/protocol.md "Transport" with a set instead of a
    bitmap: fresh if above the highest accepted, or inside the window and
    unseen; a nonce more than ``MAX_EPOCH_SKIP`` epochs ahead of the newest
    accepted one is refused as too far ahead."""

    def __init__(self, window: int, rekey_interval: int) -> None:
        self.window = window
        self.interval = rekey_interval
        self.hi = -1
        self.seen: set[int] = set()

    def decide(self, n: int) -> tuple[str, str]:
        if n <= self.hi - self.window:
            return "ReplayError", f"nonce {n} is older than the window (highest {self.hi})"
        if n in self.seen:
            return "ReplayError", f"duplicate of nonce {n}"
        epoch, cur = n // self.interval, max(self.hi, 0) // self.interval
        if epoch - cur > MAX_EPOCH_SKIP:
            return "DecodeError", f"nonce {n} is {epoch - cur} epochs ahead"
        if n == self.hi + 1:
            why = "next in order"
        elif n > self.hi:
            why = f"ahead of {self.hi}, skipping {n - self.hi - 1}"
        else:
            why = f"late, inside the window (highest {self.hi})"
        self.seen.add(n)
        self.hi = max(self.hi, n)
        if epoch != cur:
            why += f", key epoch {epoch}"
        return "accept", f"nonce {n}: {why}"


class Scenario:
    """One session: a handshake in envelopes, then sends and deliveries."""

    def __init__(self, name: str, suite: str, counter: int, window: int = 64,
                 rekey_interval: int = 65536) -> None:
        self.name, self.suite = name, suite
        self.window, self.interval = window, rekey_interval
        label = f"{name}/{suite}"
        self.resp_static = _key(label + "/resp_static")
        self.init_ephemeral = _key(label + "/init_ephemeral")
        self.resp_ephemeral = _key(label + "/resp_ephemeral")
        self.psk = None if "_NK_" in suite else _key(label + "/psk")
        bi, br = NaclBackend(), NaclBackend()
        bi.fixed_ephemeral_key_for_testing_only = [self.init_ephemeral]
        br.fixed_ephemeral_key_for_testing_only = [self.resp_ephemeral]
        self.peer_pub = br.x25519_base(self.resp_static)
        opts = {"window": window, "rekey_interval": rekey_interval}
        self.dev = DeviceSession(bi, DEVICE_ID.encode(), PEER_ID.encode(), self.peer_pub,
                                 self.psk, Msg1Counter(NonpersistingCounterStore(counter)),
                                 suite, **opts)
        directory = NonpersistingDirectory([(self.resp_static, self.peer_pub)])
        if self.psk is not None:
            directory.add(DEVICE_ID.encode(), self.psk)
        self.peer = PeerSessions(br, PEER_ID.encode(), directory, suite, **opts)
        self.hs1_payload = f"t=21.5C ({name})".encode()
        self.counter = counter
        self.hs1 = self.dev.handshake(self.hs1_payload)
        self.hs2 = self.peer.receive(self.hs1).reply
        self.dev.receive(self.hs2)
        self.sends: list[dict[str, Any]] = []
        self.env: dict[tuple[str, int], bytes] = {}
        self.deliveries: list[Delivery] = []
        self.models = {"responder": WindowModel(window, rekey_interval),
                       "initiator": WindowModel(window, rekey_interval)}

    def send(self, side: str, nonces: list[int]) -> None:
        """``side`` seals the listed nonces (and empty fillers in between)."""
        tr = self.dev.transport if side == "initiator" else self.peer.sessions(DEVICE_ID.encode())[0][1]
        direction = "i2r" if side == "initiator" else "r2i"
        seal: Callable[[bytes], bytes] = (self.dev.send if side == "initiator"
                                          else lambda p: self.peer.send(DEVICE_ID.encode(), p))
        for n in sorted(set(nonces)):
            while tr.send_nonce < n:
                seal(b"")
            p = _payload(direction, n)
            env = seal(p)
            ad_len = E.decode(env).msg_off
            self.env[(side, n)] = env
            self.sends.append({"from": side, "nonce": n, "epoch": n // self.interval,
                               "payload": p.hex(), "ad": env[:ad_len].hex(),
                               "ciphertext": env[ad_len:].hex(), "envelope": env.hex()})

    def deliver(self, to: str, nonces: list[int]) -> None:
        """Genuine envelopes from the other side, decided by the model."""
        frm = "responder" if to == "initiator" else "initiator"
        direction = "i2r" if frm == "initiator" else "r2i"
        for n in nonces:
            expect, why = self.models[to].decide(n)
            d: Delivery = {"to": to, "nonce": n, "envelope": self.env[(frm, n)].hex(),
                           "expect": expect, "why": why}
            if expect == "accept":
                d["payload"] = _payload(direction, n).hex()
            self.deliveries.append(d)

    def deliver_raw(self, to: str, env: bytes, expect: str, why: str,
                    reply: bytes | None = None) -> None:
        """A tampered or replayed envelope with a hand-written decision."""
        d: Delivery = {"to": to, "envelope": env.hex(), "expect": expect, "why": why}
        if reply is not None:
            d["reply"] = reply.hex()
        self.deliveries.append(d)

    def to_json(self) -> dict[str, Any]:
        msg = E.decode(self.hs1).msg
        v: dict[str, Any] = {
            "name": self.name, "protocol_name": self.suite,
            "device_id": DEVICE_ID, "peer_id": PEER_ID,
            "window": self.window, "rekey_interval": self.interval,
            "resp_static": self.resp_static.hex(), "peer_static_public": self.peer_pub.hex(),
            "init_ephemeral": self.init_ephemeral.hex(),
            "resp_ephemeral": self.resp_ephemeral.hex(),
        }
        if self.psk is not None:
            v["psk"] = self.psk.hex()
        v["hs1"] = {"counter": self.counter, "sid": self.counter % 24,
                    "payload": self.hs1_payload.hex(),
                    "prologue": (E.PROLOGUE + self.hs1[:len(self.hs1) - len(msg)]).hex(),
                    "noise_message": msg.hex(), "envelope": self.hs1.hex()}
        v["hs2"] = {"payload": "", "envelope": self.hs2.hex()}
        v["handshake_hash"] = self.dev.transport.handshake_hash.hex()
        v["sends"] = self.sends
        v["deliveries"] = self.deliveries
        return v


def _every_suite() -> list[Scenario]:
    out = []
    for suite in SUITES:
        s = Scenario("in-order", suite, counter=1)
        s.send("initiator", [0, 1, 2])
        s.send("responder", [0, 1])
        s.deliver("responder", [0, 1, 2])
        s.deliver("initiator", [0, 1])
        out.append(s)
    return out


def _reorder() -> Scenario:
    s = Scenario("reorder-duplicate-too-old", PSK_SUITE, counter=37, window=8)
    up = [2, 0, 1, 1, 5, 3, 12, 4, 6, 13, 13, 19, 11, 12, 18, 14, 15, 16, 17]
    down = [5, 0, 4, 1, 3, 2, 2]
    s.send("initiator", up)
    s.send("responder", down)
    s.deliver("responder", up)
    s.deliver("initiator", down)
    return s


def _nonce_encodings() -> Scenario:
    # CBOR nonce heads of 1, 2 and 3 bytes (nonce < 24, < 256, < 65536).
    s = Scenario("nonce-encodings", PSK_SUITE, counter=2)
    up = [0, 23, 24, 255, 256, 300, 24, 299]
    s.send("initiator", up)
    s.send("responder", [0, 24])
    s.deliver("responder", up)
    s.deliver("initiator", [0, 24])
    return s


def _rekey() -> Scenario:
    # rekey_interval 8: nonce n is sealed under key epoch n // 8.
    s = Scenario("rekey-boundaries", PSK_SUITE, counter=3, window=8, rekey_interval=8)
    up = [0, 1, 2, 3, 4, 5, 7, 9, 6, 8, 17, 15, 10, 15, 40, 33, 31, 120, 112, 104, 41, 103]
    down = list(range(21))
    s.send("initiator", up)
    s.send("responder", down)
    s.deliver("responder", up)
    s.deliver("initiator", down)
    return s


def _flip(b: bytes, i: int) -> bytes:
    x = bytearray(b)
    x[i] ^= 0x01
    return bytes(x)


def _tampered() -> Scenario:
    s = Scenario("tampered-envelopes", PSK_SUITE, counter=4)
    dev, peer = DEVICE_ID.encode(), PEER_ID.encode()
    s.send("initiator", [0, 1])
    s.send("responder", [0])
    up0, up1, down0 = s.env[("initiator", 0)], s.env[("initiator", 1)], s.env[("responder", 0)]
    # data header: array, head, src bstr, dst bstr, sid, nonce, ct bstr head
    # (the same offsets in both directions: the two ids swap places)
    sid_at = 2 + 1 + len(dev) + 1 + len(peer)
    nonce_at = sid_at + 1
    ct_at = E.decode(up0).msg_off
    sid = s.counter % 24
    other_src = b"sensor-8"
    s.deliver_raw("responder", _flip(up0, ct_at), "AuthError", "ciphertext byte flipped")
    s.deliver_raw("responder", _flip(up0, len(up0) - 1), "AuthError", "tag byte flipped")
    s.deliver_raw("responder", up0[:nonce_at] + b"\x01" + up0[nonce_at + 1:], "AuthError",
                  "nonce field changed from 0 to 1 (header is associated data)")
    s.deliver_raw("responder", up0.replace(dev, other_src, 1), "hint",
                  "src changed to sensor-8: no session, hint reason 0 to sensor-8",
                  E.encode(E.HEAD_HINT, peer, other_src, sid, E.HINT_UNKNOWN_SESSION))
    s.deliver_raw("responder", up0[:sid_at] + bytes([sid + 1]) + up0[sid_at + 1:], "hint",
                  "sid changed: unknown session, hint reason 0",
                  E.encode(E.HEAD_HINT, peer, dev, sid + 1, E.HINT_UNKNOWN_SESSION))
    s.deliver_raw("responder", up0.replace(peer, b"hub2", 1), "DecodeError",
                  "dst changed: not addressed to this peer")
    s.deliver_raw("responder", up0[:1] + bytes([2 << 2 | E.DATA]) + up0[2:], "DecodeError",
                  "envelope version 2")
    s.deliver_raw("responder", up0 + b"\x00", "DecodeError", "trailing byte")
    s.deliver_raw("responder", up0[:-1], "DecodeError", "truncated by one byte")
    s.deliver("responder", [0])  # nothing above changed the session
    s.deliver("responder", [0])
    s.deliver_raw("responder", s.hs1, "ReplayError", "hs1 replayed: counter not above the highest seen")
    s.deliver("responder", [1])
    s.deliver_raw("initiator", _flip(down0, E.decode(down0).msg_off), "AuthError",
                  "ciphertext byte flipped")
    s.deliver_raw("initiator", down0[:sid_at] + bytes([sid + 1]) + down0[sid_at + 1:],
                  "DecodeError", "sid changed: no such session on the device")
    s.deliver_raw("initiator", s.hs2, "DecodeError", "hs2 replayed: no handshake pending")
    s.deliver("initiator", [0, 0])
    return s


def generate() -> dict[str, Any]:
    """The whole vector file as a JSON-ready dict (deterministic)."""
    scenarios = _every_suite() + [_reorder(), _nonce_encodings(), _rekey(), _tampered()]
    return {
        "moteseal_vectors": FORMAT,
        "about": "moteseal transport-phase vectors: envelopes, explicit nonces, replay "
                 "window, rekey; format in docs/conformance.md",
        "vectors": [s.to_json() for s in scenarios],
    }


def dumps(doc: dict[str, Any]) -> str:
    """Stable text form: one key per line, trailing newline."""
    return json.dumps(doc, indent=1) + "\n"

"""Drive ``moteseal interop`` from the independent ``noiseprotocol`` package
through two pipes (docs/conformance.md, "Live interop").

The driver plays the other role with ``noiseprotocol``'s ``NoiseConnection``
(implicit nonces, no envelope). It either leads (sends payloads and checks
the echoes) or echoes what the moteseal side leads with.

As a script::

    python tests/noise_interop_driver.py --role responder \\
        --suite Noise_NKpsk0_25519_ChaChaPoly_SHA256 --payload 68690a

prints ``ok: <n> echoes`` and exits 0 if every echo matched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Sequence

from noise.connection import Keypair, NoiseConnection

REPO = Path(__file__).resolve().parent.parent


class DriverFailed(AssertionError):
    """The exchange with ``moteseal interop`` went wrong."""


def moteseal_cmd(*args: str) -> list[str]:
    """``moteseal <args>`` through this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "moteseal.cli.main", *args]


def _line(out: IO[bytes], what: str) -> bytes:
    line = out.readline()
    if not line:
        raise DriverFailed(f"moteseal closed its output before {what}")
    return bytes.fromhex(line.decode().strip())


def _put(inp: IO[bytes], msg: bytes) -> None:
    inp.write(msg.hex().encode() + b"\n")
    inp.flush()


def run_against(suite: str, our_role: str, payloads: Sequence[bytes] = (b"hello", b"", b"x" * 300),
                moteseal_leads: bool = False, psk: bytes | None = None,
                prologue: bytes = b"", timeout: float = 30.0,
                driver_psk: bytes | None = None,
                flip_first_transport: bool = False) -> tuple[int, str]:
    """Runs ``moteseal interop`` in the other role against ``noiseprotocol``
    playing ``our_role``; returns ``(moteseal exit status, its stderr)``.
    ``driver_psk`` makes noiseprotocol use a different PSK than moteseal;
    ``flip_first_transport`` flips one bit of the driver's first transport
    message (moteseal must then refuse it and exit 1).
    Raises ``DriverFailed`` if a message or an echo is wrong."""
    if psk is None and "_NK_" not in suite:
        psk = os.urandom(32)
    static = os.urandom(32)
    conn = NoiseConnection.from_name(suite.encode())
    args = ["interop", "--suite", suite, "--prologue", prologue.hex()]
    if psk is not None:
        args += ["--psk", psk.hex()]
        conn.set_psks(driver_psk or psk)
    if our_role == "initiator":
        conn.set_as_initiator()
        # The responder's public key, from noiseprotocol's own X25519.
        probe = NoiseConnection.from_name(suite.encode())
        probe.set_keypair_from_private_bytes(Keypair.STATIC, static)
        pub = probe.noise_protocol.keypairs["s"].public_bytes
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, pub)
        args += ["--role", "responder", "--static", static.hex()]
    else:
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
        pub = conn.noise_protocol.keypairs["s"].public_bytes
        args += ["--role", "initiator", "--remote-static", pub.hex()]
    if moteseal_leads:
        for p in payloads:
            args += ["--send", p.hex()]
    conn.set_prologue(prologue)
    conn.start_handshake()
    proc = subprocess.Popen(moteseal_cmd(*args), cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    # A hung peer is killed, which ends any blocked readline with EOF.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        if our_role == "initiator":
            _put(proc.stdin, conn.write_message(b""))
            if conn.read_message(_line(proc.stdout, "message 2")) != b"":
                raise DriverFailed("message 2 payload is not empty")
        else:
            if conn.read_message(_line(proc.stdout, "message 1")) != b"":
                raise DriverFailed("message 1 payload is not empty")
            _put(proc.stdin, conn.write_message(b""))
        if not conn.handshake_finished:
            raise DriverFailed("handshake did not finish")
        if moteseal_leads:
            for i in range(len(payloads)):  # echo what moteseal leads with
                _put(proc.stdin, conn.encrypt(conn.decrypt(_line(proc.stdout, f"message {i + 1}"))))
        else:
            for i, p in enumerate(payloads):
                ct = conn.encrypt(p)
                if flip_first_transport and i == 0:
                    ct = bytes([ct[0] ^ 1]) + ct[1:]
                    _put(proc.stdin, ct)
                    break
                _put(proc.stdin, ct)
                if conn.decrypt(_line(proc.stdout, f"echo {i + 1}")) != p:
                    raise DriverFailed(f"echo {i + 1} differs")
        proc.stdin.close()
        rc = proc.wait(timeout)
        return rc, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", required=True, choices=["initiator", "responder"],
                    help="the role noiseprotocol plays (moteseal plays the other)")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--payload", action="append", default=[], help="hex plaintext (repeatable)")
    ap.add_argument("--moteseal-leads", action="store_true")
    a = ap.parse_args(argv)
    payloads = [bytes.fromhex(p) for p in a.payload] or [b"hello"]
    rc, err = run_against(a.suite, a.role, payloads, a.moteseal_leads)
    print(f"ok: {len(payloads)} echoes" if rc == 0 else f"moteseal exited {rc}: {err}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

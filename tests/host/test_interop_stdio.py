"""``moteseal interop`` over real pipes: two moteseal processes wired to each
other, and one wired to the independent ``noiseprotocol`` package through
``tests/noise_interop_driver.py``, in both roles, for every supported suite."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from device.noise import SUITES
from tests.noise_interop_driver import REPO, DriverFailed, moteseal_cmd, run_against

TIMEOUT = 30


def _keys(suite: str) -> tuple[bytes, bytes, bytes | None]:
    b = NaclBackend()
    priv = os.urandom(32)
    return priv, b.x25519_base(priv), (None if "_NK_" in suite else os.urandom(32))


def _wire(init_args: list[str], resp_args: list[str]) -> tuple[tuple[int, str], tuple[int, str]]:
    """Runs initiator and responder with each one's stdout piped into the
    other's stdin; returns ``((rc, stderr), (rc, stderr))``, initiator first."""
    i2r_r, i2r_w = os.pipe()
    r2i_r, r2i_w = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(moteseal_cmd("interop", *init_args), cwd=REPO,
                                      stdin=r2i_r, stdout=i2r_w, stderr=subprocess.PIPE))
        procs.append(subprocess.Popen(moteseal_cmd("interop", *resp_args), cwd=REPO,
                                      stdin=i2r_r, stdout=r2i_w, stderr=subprocess.PIPE))
    finally:
        for fd in (i2r_r, i2r_w, r2i_r, r2i_w):  # the children hold their own copies
            os.close(fd)
    timers = [threading.Timer(TIMEOUT, p.kill) for p in procs]
    try:
        for t in timers:
            t.start()
        results = []
        for p in procs:
            _, err = p.communicate(timeout=TIMEOUT + 5)
            results.append((p.returncode, err.decode()))
        return results[0], results[1]
    finally:
        for t in timers:
            t.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _args(suite: str, priv: bytes, pub: bytes, psk: bytes | None,
          prologue: bytes = b"conformance") -> tuple[list[str], list[str]]:
    common = ["--suite", suite, "--prologue", prologue.hex()]
    if psk is not None:
        common += ["--psk", psk.hex()]
    return (["--role", "initiator", "--remote-static", pub.hex(), *common],
            ["--role", "responder", "--static", priv.hex(), *common])


SENDS = ["--send", b"first reading".hex(), "--send", "", "--send", (b"\xa5" * 1000).hex()]


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("leader", ["initiator", "responder"])
def test_two_moteseal_processes_talk_through_pipes(suite: str, leader: str) -> None:
    priv, pub, psk = _keys(suite)
    init_args, resp_args = _args(suite, priv, pub, psk)
    if leader == "initiator":
        init_args += SENDS
    else:
        resp_args += SENDS
    (irc, ierr), (rrc, rerr) = _wire(init_args, resp_args)
    assert (irc, rrc) == (0, 0), (ierr, rerr)
    lead_err, echo_err = (ierr, rerr) if leader == "initiator" else (rerr, ierr)
    assert "3 echoes verified" in lead_err
    assert "3 messages echoed" in echo_err


def test_a_wrong_psk_fails_the_handshake_on_both_sides() -> None:
    suite = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    priv, pub, psk = _keys(suite)
    init_args, resp_args = _args(suite, priv, pub, psk)
    resp_args[resp_args.index("--psk") + 1] = os.urandom(32).hex()
    (irc, ierr), (rrc, rerr) = _wire(init_args + SENDS, resp_args)
    assert rrc == 1 and "handshake message rejected: AuthError" in rerr
    assert irc == 1 and "input ended before message 2" in ierr


def test_a_prologue_mismatch_fails_the_handshake() -> None:
    suite = "Noise_NK_25519_ChaChaPoly_SHA256"
    priv, pub, psk = _keys(suite)
    init_args, _ = _args(suite, priv, pub, psk, prologue=b"one")
    _, resp_args = _args(suite, priv, pub, psk, prologue=b"two")
    (irc, _), (rrc, rerr) = _wire(init_args + SENDS, resp_args)
    assert (irc, rrc) == (1, 1)
    assert "AuthError" in rerr


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("their_role", ["initiator", "responder"])
@pytest.mark.parametrize("moteseal_leads", [False, True], ids=["driver-leads", "moteseal-leads"])
def test_moteseal_interop_against_noiseprotocol(suite: str, their_role: str,
                                                moteseal_leads: bool) -> None:
    rc, err = run_against(suite, their_role, moteseal_leads=moteseal_leads,
                          prologue=b"interop", timeout=TIMEOUT)
    assert rc == 0, err
    assert ("3 echoes verified" if moteseal_leads else "3 messages echoed") in err


def test_the_driver_notices_a_psk_mismatch() -> None:
    # noiseprotocol uses one PSK and moteseal another: moteseal refuses message 1.
    with pytest.raises(DriverFailed, match="closed its output before message 2"):
        run_against("Noise_NKpsk0_25519_ChaChaPoly_SHA256", "initiator",
                    timeout=TIMEOUT, driver_psk=os.urandom(32))


@pytest.mark.parametrize("their_role", ["initiator", "responder"])
def test_a_flipped_transport_message_is_refused(their_role: str) -> None:
    rc, err = run_against("Noise_NKpsk2_25519_ChaChaPoly_SHA256", their_role,
                          timeout=TIMEOUT, flip_first_transport=True)
    assert rc == 1
    assert "transport message 1 rejected: AuthError" in err


@pytest.mark.parametrize("args, message", [
    (["--role", "responder", "--suite", "Noise_NK_25519_ChaChaPoly_SHA256"], "needs --static"),
    (["--role", "initiator", "--suite", "Noise_NK_25519_ChaChaPoly_SHA256",
      "--remote-static", "00" * 32, "--static", "11" * 32], "no static key"),
    (["--role", "initiator", "--suite", "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
      "--remote-static", "00" * 32], "32-byte --psk"),
    (["--role", "initiator", "--suite", "Noise_NK_25519_ChaChaPoly_SHA256",
      "--remote-static", "00" * 31], "must be 32 bytes"),
    (["--role", "initiator", "--suite", "Noise_XX_25519_ChaChaPoly_SHA256",
      "--remote-static", "00" * 32], "Noise_XX"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    p = subprocess.run(moteseal_cmd("interop", *args), cwd=REPO, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 2
    assert message in p.stderr.decode()
    assert p.stdout == b""

"""``moteseal vectors run | generate`` and ``moteseal interop`` (CPython).

The runner core is ``moteseal.conformance.runner`` (also runs on MicroPython), the
generator ``moteseal.conformance.vectorgen`` and the stdio peer ``moteseal.conformance.interop``; this
module only parses options. Formats and examples: docs/conformance.md.

Exit codes: 0 success, 1 a vector or the exchange failed, 2 usage error
(bad option, missing or unreadable file, bad key length).
"""

from __future__ import annotations

import binascii
import json
import sys
from pathlib import Path

import click

from moteseal.conformance import runner as conformance
from device.errors import LocalError
from device.noise import SUITES


@click.group("vectors")
def vectors_group() -> None:
    """Run Noise test-vector files; generate moteseal's transport vectors.

    \b
    Examples:
      moteseal vectors run ../shared/vectors/noise_nk_cacophony.json
      moteseal vectors generate --out moteseal_transport.json
      moteseal vectors run moteseal_transport.json
    """


@vectors_group.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (lines and counts) instead of text.")
def run_cmd(files: tuple[str, ...], as_json: bool) -> None:
    """Run every vector in FILES, in both roles.

    FILES are Noise test-vector JSON files (cacophony / snow / noise-c
    format) or files written by `moteseal vectors generate`. Prints one line
    per vector and role (PASS, FAIL: reason, SKIP: reason) and a summary.
    Exit status 1 if any vector failed, 2 if a file could not be read.

    \b
    Examples:
      moteseal vectors run ../shared/vectors/noise_nk_cacophony.json
      moteseal vectors run --json a.json b.json
    """
    lines: list[str] = []
    emit = lines.append if as_json else click.echo
    counts, unreadable = conformance.run_paths(list(files), conformance.default_backend(), emit)
    doc = {"lines": lines, "passed": counts[0], "failed": counts[1], "skipped": counts[2],
           "unreadable": [{"file": p, "error": e} for p, e in unreadable]}
    if unreadable:  # a usage error: the same {"error", "exit_code"} as every command
        doc.update(error="; ".join(f"{p}: {e}" for p, e in unreadable), exit_code=2)
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(conformance.summary(counts))
    if unreadable:
        click.echo(f"moteseal: error: {doc['error']}", err=True)
        sys.exit(2)
    sys.exit(1 if counts[1] else 0)


@vectors_group.command("generate")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="File to write (JSON).")
def generate_cmd(out: str) -> None:
    """Write moteseal's transport-phase vectors to --out.

    Explicit nonces, reordering inside the replay window, duplicates and
    too-old messages, rekey boundaries, tampered envelopes: whole envelopes
    with their routing header and the expected accept/reject decision. The
    file is deterministic (fixed keys and ephemerals) and is checked against
    moteseal before it is written; exit status 1 if that check fails.

    \b
    Example:
      moteseal vectors generate --out moteseal_transport.json
    """
    from moteseal.cli.errors import require_parent
    from moteseal.conformance import vectorgen

    require_parent(out, "--out")

    doc = vectorgen.generate()
    counts = conformance.run_vectors(doc, conformance.default_backend(), lambda line: None)
    if counts[1]:
        click.echo(f"moteseal: error: generated vectors fail against moteseal "
                   f"({conformance.summary(counts)}); nothing written", err=True)
        sys.exit(1)
    try:
        Path(out).write_text(vectorgen.dumps(doc))
    except OSError as e:
        click.echo(f"moteseal: error: {out}: {e.strerror}", err=True)
        sys.exit(2)
    click.echo(f"wrote {len(doc['vectors'])} vectors to {out} ({conformance.summary(counts)})")


def _hex(name: str, value: str | None, size: int | None = 32) -> bytes | None:
    if value is None:
        return None
    try:
        b = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise click.BadParameter("not hex", param_hint=name) from None
    if size is not None and len(b) != size:
        raise click.BadParameter(f"must be {size} bytes ({2 * size} hex digits)", param_hint=name)
    return b


@click.command("interop")
@click.option("--role", required=True, type=click.Choice(["initiator", "responder"]),
              help="initiator: the Noise NK client side; responder: the side holding the static key.")
@click.option("--suite", required=True, type=click.Choice(list(SUITES)),
              help="Noise protocol name.")
@click.option("--static", "static", metavar="HEX",
              help="Responder: its 32-byte static private key.")
@click.option("--remote-static", "remote_static", metavar="HEX",
              help="Initiator: the responder's 32-byte static public key.")
@click.option("--psk", metavar="HEX", help="32-byte PSK (NKpsk0, NKpsk2).")
@click.option("--prologue", metavar="HEX", default="", help="Prologue bytes (default empty).")
@click.option("--send", "sends", metavar="HEX", multiple=True,
              help="Lead: send this plaintext after the handshake and check its echo "
                   "(repeatable). Without --send this side echoes until its input ends.")
def interop_cmd(role: str, suite: str, static: str | None, remote_static: str | None,
                psk: str | None, prologue: str, sends: tuple[str, ...]) -> None:
    """Speak one Noise handshake and transport messages over stdin/stdout.

    One hex-encoded bare Noise message per line, implicit nonces from 0 in
    each direction, empty handshake payloads, no rekey. The side given
    --send leads: it sends each payload and checks the echo, then exits.
    The other side echoes every transport message until its input ends.
    Exit 0 when done, 1 if a message failed or an echo differed.

    \b
    Example (two moteseal processes wired with a pair of FIFOs):
      mkfifo a b
      moteseal interop --role responder --suite Noise_NK_25519_ChaChaPoly_SHA256 \\
          --static $PRIV <a >b &
      moteseal interop --role initiator --suite Noise_NK_25519_ChaChaPoly_SHA256 \\
          --remote-static $PUB --send 68656c6c6f >a <b
    """
    sk = _hex("--static", static)
    rs = _hex("--remote-static", remote_static)
    pk = _hex("--psk", psk)
    pro = _hex("--prologue", prologue, None) or b""
    payloads = [_hex("--send", s, None) or b"" for s in sends] if sends else None
    from moteseal.conformance import interop
    from moteseal.crypto.backend_nacl import NaclBackend

    try:
        code = interop.run(NaclBackend(), role, suite, sys.stdin.buffer, sys.stdout.buffer,
                           sys.stderr, static=sk, remote_static=rs, psk=pk, prologue=pro,
                           sends=payloads)
    except LocalError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(code)

"""``moteseal broker certs``: a CA and a TLS server certificate for Mosquitto
(CPython, the ``cryptography`` package).

It lives here, not in ``gateway/``, because the gateway imports no crypto
(docs/architecture.md); ``moteseal.cli.main`` adds it to ``moteseal broker``.

Invariants:
- Private keys (``ca.key``, ``server.key``) are created 0600 and never
  printed; certificates are 0644 (public).
- Nothing is overwritten without ``--force``; ``--renew`` re-issues only the
  server certificate from the existing CA, so clients that trust ``ca.crt``
  keep working.
- The server certificate names exactly the DNS names and addresses given:
  clients verify the hostname they connect to against them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import socket
import tempfile
from pathlib import Path

import click

from moteseal.cli.errors import MissingDirectory

__all__ = ["certs_cmd", "make_ca", "make_server_cert"]

_DEFAULT_DIR = Path("/etc/mosquitto/certs")
# Browsers cap server certificates at 398 days; MQTT clients do not, but a
# yearly renewal (`--renew`) keeps the habit. The CA outlives many renewals.
SERVER_DAYS = 825
CA_DAYS = 3650


class CertError(click.ClickException):
    """A certificate could not be made or written (exit 2: bad input)."""

    exit_code = 2


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(name: str, days: int) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a new self-signed ECDSA P-256 CA that
    may sign server certificates only (path length 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def make_server_cert(ca_key_pem: bytes, ca_cert_pem: bytes, dns: list[str], ips: list[str],
                     days: int) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a server certificate signed by the CA,
    valid for ``dns`` and ``ips``. Raises ``CertError`` for a bad CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except (ValueError, TypeError) as exc:
        raise CertError(f"cannot load the CA ({exc})") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key is not an ECDSA key made by `moteseal broker certs`")
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertError("ca.key does not belong to ca.crt")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(min(_now() + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Write ``data`` with ``mode`` from the start (no window in which a key
    is readable by others); atomically when replacing."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _give_to(owner: str, *paths: Path) -> None:
    """As root, hand the files to the broker's user, which must read the
    server key; the CA key stays root's."""
    if os.geteuid() != 0 or not owner:
        return
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return
    for p in paths:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def _check_names(dns: tuple[str, ...], ips: tuple[str, ...]) -> tuple[list[str], list[str]]:
    for d in dns:
        label_ok = all(part and len(part) <= 63 and all(c.isalnum() or c in "-*" for c in part)
                       for part in d.split("."))
        if not d.isascii() or not label_ok or len(d) > 253:
            raise click.BadParameter(f"{d!r} is not a DNS name", param_hint="--dns")
    for i in ips:
        try:
            ipaddress.ip_address(i)
        except ValueError:
            raise click.BadParameter(f"{i!r} is not an IP address", param_hint="--ip") from None
    if not dns and not ips:
        host = socket.gethostname()
        return [host, f"{host}.local", "localhost"], ["127.0.0.1"]
    return list(dns), list(ips)


@click.command("certs")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULT_DIR,
              show_default=True, help="Directory for ca.crt, ca.key, server.crt, server.key (must exist).")
@click.option("--dns", multiple=True, metavar="NAME",
              help="DNS name clients use for the broker (repeatable; default: this host's name, "
                   "NAME.local and localhost).")
@click.option("--ip", multiple=True, metavar="ADDR",
              help="IP address clients use for the broker (repeatable; default 127.0.0.1 when no --dns).")
@click.option("--days", type=click.IntRange(1, 3650), default=SERVER_DAYS, show_default=True,
              help="Validity of the server certificate (capped at the CA's).")
@click.option("--ca-days", type=click.IntRange(1, 36500), default=CA_DAYS, show_default=True,
              help="Validity of a new CA.")
@click.option("--ca-name", default="moteseal broker CA", show_default=True,
              help="Common name of a new CA.")
@click.option("--renew", is_flag=True,
              help="Keep the CA (ca.key, ca.crt); issue a new server certificate and key only.")
@click.option("--force", is_flag=True, help="Replace existing files (a new CA: every client needs the new ca.crt).")
@click.option("--owner", default="mosquitto", show_default=True,
              help="When run as root, give server.crt and server.key to this user (the broker's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def certs_cmd(out_dir: Path, dns: tuple[str, ...], ip: tuple[str, ...], days: int, ca_days: int,
              ca_name: str, renew: bool, force: bool, owner: str, as_json: bool) -> None:
    """Create a CA and a TLS server certificate for the broker.

    Writes ca.crt (give it to every client: peers, gateways, simulated and
    real devices verify the broker with it), ca.key (0600; keep it offline
    once the server certificate is made, it signs renewals), server.crt and
    server.key (0600) in the paths broker_config/mosquitto.conf names.
    Existing files are refused unless --force (new CA) or --renew (same CA).
    Keys are ECDSA P-256; nothing secret is printed.

    \b
    Examples:
      sudo moteseal broker certs --dns pi.local --ip 192.168.1.20
      moteseal broker certs --out-dir ./certs --dns localhost --ip 127.0.0.1
      sudo moteseal broker certs --renew --dns pi.local --ip 192.168.1.20 --days 365
    """
    names, addrs = _check_names(dns, ip)
    if renew and force:
        raise click.UsageError("give --renew (keep the CA) or --force (new CA), not both")
    if not out_dir.is_dir():
        raise MissingDirectory(f"--out-dir {out_dir}: directory does not exist; create it first")
    ca_key_p, ca_crt_p = out_dir / "ca.key", out_dir / "ca.crt"
    srv_key_p, srv_crt_p = out_dir / "server.key", out_dir / "server.crt"
    if renew:
        try:
            ca_key, ca_crt = ca_key_p.read_bytes(), ca_crt_p.read_bytes()
        except FileNotFoundError as exc:
            raise CertError(f"--renew needs the CA: {exc.filename} does not exist") from None
        targets = [srv_key_p, srv_crt_p]
    else:
        targets = [ca_key_p, ca_crt_p, srv_key_p, srv_crt_p]
        if not force:
            there = [str(p) for p in targets if p.exists()]
            if there:
                raise CertError(f"{', '.join(there)}: already exist; --renew issues a new server "
                                "certificate from this CA, --force replaces the CA too")
        ca_key, ca_crt = make_ca(ca_name, ca_days)
    srv_key, srv_crt = make_server_cert(ca_key, ca_crt, names, addrs, days)
    replace = renew or force
    if not renew:
        _write(ca_key_p, ca_key, 0o600, replace)
        _write(ca_crt_p, ca_crt, 0o644, replace)
    _write(srv_key_p, srv_key, 0o600, replace)
    _write(srv_crt_p, srv_crt, 0o644, replace)
    _give_to(owner, srv_key_p, srv_crt_p)
    doc = {"ca_cert": str(ca_crt_p), "ca_key": str(ca_key_p), "server_cert": str(srv_crt_p),
           "server_key": str(srv_key_p), "dns": names, "ip": addrs, "days": days, "renewed": renew}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
        return
    click.echo(f"wrote {srv_crt_p} and {srv_key_p} for {', '.join(names + addrs)}"
               + ("" if renew else f", signed by the new CA {ca_crt_p} ({ca_key_p}: keep it safe)"))
    click.echo(f"clients verify the broker with {ca_crt_p}: e.g. moteseal peer listen --ca-file "
               f"{ca_crt_p} --port 8883; restart Mosquitto to load a renewed certificate")

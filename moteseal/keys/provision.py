"""Provisioning: PSKs, registry entries and bundle files (CPython only).

``provision_device`` draws a fresh PSK, records the device in its peer's
registry (pinning every key the peer answers on) and returns the bundle
that ``write_bundle`` writes for flashing. The bundle format (CDDL in
``docs/keys.md``) and its reader live in ``device.bundle``, which runs on
the device too; this module encodes with cbor2 and decodes with that same
reader, so a file this side accepts is one every device accepts.

Invariants:
- A bundle file is written 0600 and refused when group or others may read
  it: it holds the PSK and the link password.
- ``encode_bundle`` runs the device reader over its own output, so a
  bundle a device would refuse (bad id, non-ASCII text) is never written.
- ``check`` catches truncation, corruption and hand edits. It is a checksum,
  not a signature: whoever can read a bundle holds its PSK anyway, so the
  file's protection is its permissions and the flashing path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import cbor2
import nacl.utils

from device import bundle as core
from device.bundle import BUNDLE_MAX_BYTES as MAX_BUNDLE_BYTES
from device.bundle import BUNDLE_VERSION, CHECK_BYTES, Bundle, BundleError
from moteseal.config import SUITES
from moteseal.keys.keyfile import KeyFileError, read_private_file, write_private_file
from moteseal.keys.registry import PSK_BYTES, DeviceRecord, Registry

__all__ = ["Bundle", "BundleError", "MAX_BUNDLE_BYTES", "decode_bundle", "describe_bundle", "device_session",
           "encode_bundle", "new_psk", "provision_device", "read_bundle", "tls_link_fields", "write_bundle"]

# A CA for a device: one certificate, DER (the board's mbedtls parses one DER
# certificate per load; PEM needs more RAM on the board). Production CAs are
# 0.5-1.5 KiB; the bundle holds 4 KiB in all.
CA_MAX_BYTES = 2048


def describe_bundle(b: Bundle) -> dict[str, Any]:
    """A JSON-safe summary without the PSK or the link password."""
    link = {k: v for k, v in b.link.items() if k not in ("password", "ca", "pin")}
    if "password" in b.link:
        link["password"] = "(set)"
    if "ca" in b.link:  # public, but long: its fingerprint identifies it
        link["ca_sha256"] = hashlib.sha256(b.link["ca"]).hexdigest()
    if "pin" in b.link:
        link["pin_sha256"] = b.link["pin"].hex()
    return {
        "device_id": b.device_id.decode("ascii"),
        "generation": b.generation,
        "peers": [{"peer_id": p.decode("ascii"), "keys": [k.hex() for k in ks]} for p, ks in b.peers],
        "suite": b.suite,
        "link": link,
        "pad": None if b.pad is None else {"hs": list(b.pad.hs), "up": list(b.pad.up),
                                           "down": list(b.pad.down)},
    }


def _body(b: Bundle) -> dict[str, Any]:
    return {
        "format": "moteseal-bundle",
        "v": BUNDLE_VERSION,
        "device": b.device_id,
        "generation": b.generation,
        "peers": [{"id": p, "keys": list(ks)} for p, ks in b.peers],
        "psk": b.psk,
        "suite": b.suite,
        "link": dict(b.link),
        # Only for a device that pads (device/bundle.py): older readers then
        # refuse the bundle instead of talking unpadded to a padding hub.
        **({} if b.pad is None else
           {"pad": {"hs": list(b.pad.hs), "up": list(b.pad.up), "down": list(b.pad.down)}}),
    }


def _check(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(cbor2.dumps(body, canonical=True)).digest()[:CHECK_BYTES]


def encode_bundle(b: Bundle) -> bytes:
    """Canonical CBOR of ``b`` with its checksum. Raises ``BundleError`` for
    a bundle the device reader would refuse (bad id, non-ASCII text, ...)."""
    body = _body(b)
    body["check"] = _check(body)
    data = cbor2.dumps(body, canonical=True)
    core.decode_bundle(data)  # never write what a device cannot read
    return data


def decode_bundle(data: bytes, source: str = "bundle") -> Bundle:
    """Parse and check a bundle with the device's own reader
    (``device.bundle``). Raises ``BundleError`` naming ``source``."""
    try:
        return core.decode_bundle(data)
    except BundleError as e:
        raise BundleError(f"{source}: {e}") from None


def write_bundle(path: str | os.PathLike[str], b: Bundle, overwrite: bool = False) -> None:
    """Write ``b`` 0600, atomically. Raises ``FileExistsError``."""
    write_private_file(path, encode_bundle(b), overwrite)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Raises ``FileNotFoundError``, ``KeyPermissionError`` or ``BundleError``."""
    try:
        data = read_private_file(path, MAX_BUNDLE_BYTES)
    except KeyFileError as e:
        if type(e) is KeyFileError:  # too large
            raise BundleError(str(e)) from None
        raise
    return decode_bundle(data, str(path))


def _one_certificate_der(path: str | os.PathLike[str], what: str) -> bytes:
    # One X.509 certificate from a PEM or DER file, as DER. Raises BundleError.
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise BundleError(f"{path}: {what} must hold one certificate, not {len(certs)}")
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        raise BundleError(f"{path}: {what} is not a PEM or DER certificate") from None
    return cert.public_bytes(Encoding.DER)


def tls_link_fields(ca_file: str | os.PathLike[str] | None = None, server_name: str | None = None,
                    pin_cert: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The bundle's TLS link fields (device/bundle.py): ``ca`` (the CA
    certificate in ``ca_file``, PEM or DER, stored as DER), ``pin`` (SHA-256
    of the DER of the server certificate in ``pin_cert``) and
    ``server_name``. Empty without ``ca_file`` and ``pin_cert``. Raises
    ``BundleError`` for a file that is not one certificate, a CA over
    ``CA_MAX_BYTES``, or a server name without a CA or pin."""
    out: dict[str, Any] = {}
    if ca_file is not None:
        der = _one_certificate_der(ca_file, "--ca-file")
        if len(der) > CA_MAX_BYTES:
            raise BundleError(f"{ca_file}: CA certificate is {len(der)} bytes; a bundle takes {CA_MAX_BYTES}")
        out["ca"] = der
    if pin_cert is not None:
        out["pin"] = hashlib.sha256(_one_certificate_der(pin_cert, "--pin-cert")).digest()
    if server_name is not None:
        if not out:
            raise BundleError("--server-name needs --ca-file or --pin-cert (it names a TLS server)")
        out["server_name"] = server_name
    return out


def new_psk() -> bytes:
    return nacl.utils.random(PSK_BYTES)


def provision_device(
    registry: Registry, device_id: bytes, suite: str, link: dict[str, Any], replace: bool = False,
    pad: Any = None,
) -> tuple[DeviceRecord, Bundle]:
    """Draw a PSK, record the device (pinning the peer's live keys) and
    return the record and its bundle. Re-provisioning (``replace``)
    invalidates the old PSK at once. ``pad``: a ``PadPolicy`` to record
    for the device, False to record that it does not pad, None to keep what
    the registry holds; the bundle's ``pad`` field carries the result, so
    the device and the peer agree (``device/padding.py``).

    Raises ``RegistryError`` (exists, no peer key, bad id).
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    psk = new_psk()
    rec = registry.provision(device_id, psk, suite, replace=replace)
    if pad is not None:  # after the PSK: a refused provision changes no padding
        registry.set_padding(device_id, pad or None)
    bundle = Bundle(device_id, [(registry.peer_id, rec.pins)], psk, suite, link, rec.generation,
                    pad=registry.padding(device_id))
    return rec, bundle


def device_session(backend: Any, bundle: Bundle, counter: Any, peer_id: bytes | None = None, **opts: Any) -> Any:
    """A ``device.session.DeviceSession`` for ``bundle``, talking to
    ``peer_id`` (default: the bundle's first peer) on its newest pinned key.

    During a rotation overlap the bundle pins two keys; the newest is the one
    the peer answers on after the old one is retired. ``counter`` is a
    ``device.counter.Msg1Counter``. Raises ``KeyError`` for a peer the bundle
    does not name.
    """
    from device.session import DeviceSession

    pid = bundle.peer_id if peer_id is None else peer_id
    keys = bundle.pinned_keys(pid)
    if bundle.pad is not None:
        opts.setdefault("pad", bundle.pad)
    return DeviceSession(backend, bundle.device_id, pid, keys, bundle.psk, counter, bundle.suite, **opts)

"""TLS for the device's MQTT client, and the names of its connection
failures (``micropython_port.mqtt``, Rules 6 and 7). A module of its own
because a device that connects in plain TCP never needs it: the client
imports it for a TLS handshake or a failed attempt, and drops it again
after a failure on a plain connection, so it costs no heap in steady state.

Invariants:
- Rule 1: with a CA the chain and the server name (``server_name``, also
  sent as SNI) are verified by mbedtls (``CERT_REQUIRED``); with a pin the
  SHA-256 of the server's certificate (DER) must equal it, checked before
  the socket is returned, so nothing (no CONNECT, so no password) is
  written to an unpinned server. A pin alone skips the chain check: the
  pinned certificate is the trust. ``wrap`` never returns a socket that
  failed either check, and the client never falls back to plain TCP.
- Rule 2: ``name_failure`` maps every exception of a connection attempt to
  one ``(event, detail)`` pair; the names are docs/micropython.md,
  "Events". Certificate failures are told apart by mbedtls's verify
  message (the unix port and the ESP32 and RP2 ports raise ``ValueError``
  with it).

Limits: the certificate checks need the board's clock: an unset clock
(2000-01-01) makes every certificate "not yet valid"; set it (``ntptime``)
or pin the certificate, which skips the validity dates.
"""

from micropython import const

from device.errors import DecodeError

_ENOMEM = const(12)
_ECONNRESET = const(104)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)
_ECONNREFUSED = const(111)
# A flash build for a plain-TCP link (no ``ca``, no ``pin``) sets this to
# const(0) (moteseal/flash/features.py ``link_flags``; ``wrap`` is left out):
# no TLS failure can happen there, and mpy-cross drops their names.
_TLS = const(1)
# CONNACK return codes 1..5 (MQTT 3.1.1 section 3.2.2.3), as event details.
_REFUSALS = ("bad_protocol", "id_rejected", "server_unavailable", "bad_credentials",
             "not_authorized")


def wrap(c, s):
    # Rule 1: the TLS handshake on the connected socket ``s`` for client
    # ``c`` (``c.tls`` is (ca, pin, server name)); returns
    # the TLS socket. Raises ValueError (certificate refused: mbedtls's
    # reason as text, or "pin") or OSError (handshake failed, timeout).
    try:
        import tls
    except ImportError:  # MicroPython before 1.23
        import ssl as tls
    ca, pin, name = c.tls
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    seen = []
    if pin is not None:
        from hashlib import sha256

        def check(cert, depth):
            if depth == 0:
                seen.append(sha256(cert).digest())
            return 0
        # A pin alone: the chain is not checked, the certificate is.
        try:
            ctx.verify_callback = check
        except AttributeError:  # before MicroPython 1.24: pin with a CA instead
            raise ValueError("nopin")
    if ca is None:
        ctx.verify_mode = tls.CERT_OPTIONAL
    else:
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(ca)
    s = ctx.wrap_socket(s, server_hostname=name)
    if pin is not None and seen != [pin]:
        s.close()
        raise ValueError("pin")
    return s


def name_failure(stage, e):
    # Rule 7: name the failure of a connection attempt at ``stage``.
    a = e.args
    code = a[0] if a else None
    if stage == 0:
        ev, d = "dns_failed", code
    elif _TLS and isinstance(e, ValueError):
        m = str(code)
        ev = "tls_failed"
        if m == "pin":
            d = "pin_mismatch"
        elif m == "nopin":
            d = "pin_unsupported"
        elif "invalid" in m:
            d = "bad_ca"
        elif "expired" in m:
            d = "expired"
        elif "future" in m:
            d = "not_yet_valid"
        elif "CN" in m or "name" in m:
            d = "name_mismatch"
        else:
            d = "untrusted"
    elif code == _ETIMEDOUT:
        ev, d = "timeout", ("connect", "connect", "tls", "connack", "", "suback")[stage]
    elif stage == 4:
        c = a[1] if len(a) > 1 else 0
        ev, d = "mqtt_refused", _REFUSALS[c - 1] if 0 < c < 6 else c
    elif stage == 5 and code == _ECONNREFUSED:
        ev, d = "mqtt_refused", "subscribe"  # SUBACK 0x80: the ACL
    elif _TLS and stage == 2:
        # The heap is too small for TLS: the tls objects (MemoryError) or
        # mbedtls's buffers (MBEDTLS_ERR_SSL_ALLOC_FAILED, which the tls
        # module raises as ENOMEM).
        oom = isinstance(e, MemoryError) or code in (-0x7F00, _ENOMEM)
        ev, d = "tls_failed", "out_of_memory" if oom else "handshake"
    elif stage == 1 and code == _ECONNREFUSED:
        ev, d = "connection_refused", None
    elif stage == 3 and code in (_ECONNRESET, _ENOTCONN):
        ev, d = "connection_closed", "connack"
    elif stage == 3 and isinstance(e, DecodeError):
        ev, d = "not_mqtt", "connack"  # e.g. a TLS listener answering plain TCP
    else:
        ev, d = "connection_failed", code
    return ev, d

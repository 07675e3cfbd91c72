"""The device program: read the provisioned bundle, then run the device
application (``micropython_port.app``). ``main.py`` on a board (runs at
boot), and ``micropython micropython_port/main.py --bundle ... --count N``
on the unix port (tests, benchmarks).

Invariants:
- Rule 1: the bundle is read before the application's modules are imported,
  and its reader module is dropped afterwards, so its code and its parsing
  garbage leave the heap before the session's long-lived objects arrive
  (docs/micropython.md, "Memory": fragmentation, not only size, decides
  the smallest heap a device runs in). For the same reason the collector
  runs every 4 KiB of allocation during start-up.
- Rule 2: nothing printed holds a key, the PSK or a plaintext.
"""

import sys

from time import ticks_diff, ticks_ms

from device.errors import LocalError

def _args(argv):
    # --name value pairs (boards have no argparse); flags take no value.
    opts = {}
    i = 1
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise LocalError("unexpected argument " + a)
        if a == "--quiet":
            opts["quiet"] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            raise LocalError(a + " needs a value")
        opts[a[2:]] = argv[i + 1]
        i += 2
    return opts


class Provisioned:
    """What the device keeps of its bundle: ``device_id``, ``peer_id``,
    ``peer_keys`` (newest first), ``psk``, ``suite``, ``link``. A plain
    object, so holding it does not hold the bundle reader's module (a
    ``Bundle``'s class would). ``repr`` shows neither the PSK nor the link."""

    def __init__(self, bundle):
        self.device_id = bundle.device_id
        self.peer_id = bundle.peer_id
        self.peer_keys = bundle.peer_keys
        self.psk = bundle.psk
        self.suite = bundle.suite
        self.link = bundle.link

    def __repr__(self):
        return "Provisioned(device=%r, suite=%r)" % (self.device_id, self.suite)


def _load_bundle(path):
    # Rule 1: the bundle reader runs once; its module goes before the
    # application's modules come, so its RAM is free for the session.
    import gc
    from device.bundle import load_bundle
    try:
        return Provisioned(load_bundle(path))
    finally:
        sys.modules.pop("device.bundle", None)
        pkg = sys.modules.get("device")
        if pkg is not None and hasattr(pkg, "bundle"):
            delattr(pkg, "bundle")
        gc.collect()


def network_up(path="wifi.json", timeout_ms=20000):
    """On a board with ``network.WLAN`` (ESP32, Pico W): join the Wi-Fi
    named in ``path`` (``{"ssid": ..., "password": ...}``, written by
    ``moteseal flash build --wifi-ssid``) unless already connected. Does
    nothing on the unix port or without the file. Raises ``OSError`` if the
    network does not come up in time."""
    try:
        import network
    except ImportError:
        return False
    try:
        with open(path) as f:
            import json
            cfg = json.load(f)
    except OSError:
        return False
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg["ssid"], cfg.get("password", ""))
        t0 = ticks_ms()
        while not wlan.isconnected():
            if ticks_diff(ticks_ms(), t0) > timeout_ms:
                raise OSError("Wi-Fi did not connect")
            from time import sleep_ms
            sleep_ms(100)
    return True


def _print_event(name, detail):
    import json
    print(json.dumps({"event": name, "detail": detail}))


def main(argv=None):
    """Options (unix port; a board runs with none): --bundle PATH
    (default moteseal.bundle), --state PATH (counter file, default
    moteseal.ctr), --count N, --interval-ms MS, --linger-ms MS,
    --hs-timeout-ms MS, --host H, --port P, --serial PATH, --quiet.
    Prints JSON event lines and a summary line."""
    import gc
    import json
    # Rule 1: collect every 4 KiB allocated, so start-up garbage is gone
    # before long-lived objects land between it (measured: 4 KiB less heap
    # needed; after the handshake nothing allocates, so it costs nothing).
    if hasattr(gc, "threshold"):  # absent where MICROPY_GC_ALLOC_THRESHOLD is off
        gc.threshold(4096)
    opts = _args(sys.argv if argv is None else argv)
    network_up()
    bundle = _load_bundle(opts.get("bundle", "moteseal.bundle"))
    from micropython_port.app import DEFAULT_HS_TIMEOUT_MS, Device
    gc.collect()
    override = {}
    if "host" in opts:
        override["host"] = opts["host"]
    if "port" in opts:
        override["port"] = int(opts["port"])
    if "serial" in opts:
        override["kind"] = "serial"
        override["port"] = opts["serial"]
    dev = Device(bundle, opts.get("state", "moteseal.ctr"), override,
                 hs_timeout_ms=int(opts.get("hs-timeout-ms", DEFAULT_HS_TIMEOUT_MS)),
                 log=None if opts.get("quiet") else _print_event)
    bundle = None
    gc.collect()
    if "interval-ms" in opts:
        dev.interval_ms = int(opts["interval-ms"])
    count = int(opts["count"]) if "count" in opts else None
    counts = dev.run(count, int(opts.get("linger-ms", 0)))
    gc.collect()
    summary = {"event": "summary", "interval_ms": dev.interval_ms, "mem_free": gc.mem_free()}
    summary.update(counts)
    print(json.dumps(summary))
    return counts


if __name__ == "__main__":
    main()

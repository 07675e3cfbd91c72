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
  runs every 4 KiB of allocation during start-up. Once the device is
  made, ``main`` deletes the start-up functions (``_start`` and what it
  calls): their code is not needed again (``main`` runs once per boot),
  and the handshake reuses their room.
- Rule 2: nothing printed holds a key, the PSK or a plaintext.
- Rule 3: before the device starts, one line names the code each
  primitive runs (``moteseal paths x25519=... aead=...``, from
  ``micropython_port.backend.paths()``), even with --quiet: a board that
  runs a slow path says so at every boot. It is not JSON (tools that read
  the event lines skip it; ``moteseal flash monitor`` shows it as is).
  A primitive on its pure-Python path whose fallback module is absent (a
  flash build for a board with a fast path ships none) stops the device
  there with ``LocalError``: no silent slow path, and no failure deferred
  to the first handshake.
- Rule 4: a staged application update is applied, or an unconfirmed one
  rolled back, before anything else is imported
  (``micropython_port.app_update.boot``); a device whose last update came
  through untouched skips it with two ``stat`` calls.
"""

import gc
import json
import sys

from micropython import const

from device.errors import LocalError

# A flash build without updates sets this to const(0) (moteseal/flash/build.py
# FEATURES): the boot step (Rule 4) then imports nothing, and its modules
# are not in the build.
_UPDATES = const(1)


def _args(argv):
    # --name value pairs (boards have no argparse); --quiet takes no value.
    opts = {}
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--quiet":
            opts["quiet"] = True
            i += 1
        elif a.startswith("--") and i + 1 < len(argv):
            opts[a[2:]] = argv[i + 1]
            i += 2
        else:
            raise LocalError("bad argument " + a)
    return opts


def load_bundle(path="moteseal.bundle"):
    """The provisioned bundle at ``path`` as the tuple ``Device`` takes:
    (device_id, peer_id, peer_keys newest first, psk, suite, link, pad). Call it
    before importing ``micropython_port.app`` (Rule 1). Raises
    ``BundleError`` (a ``LocalError``) or ``OSError``."""
    # Rule 1: the bundle reader runs once; its module goes before the
    # application's modules come, so its RAM is free for the session. A
    # Bundle would hold its class, and so the reader's module.
    from device.bundle import load_bundle
    try:
        b = load_bundle(path)
        return b.device_id, b.peer_id, b.peer_keys, b.psk, b.suite, b.link, b.pad
    finally:
        sys.modules.pop("device.bundle", None)
        pkg = sys.modules.get("device")
        if hasattr(pkg, "bundle"):
            delattr(pkg, "bundle")
        gc.collect()


def network_up(path="wifi.json", timeout_ms=20000, report=None, backoff_max_ms=60000):
    """On a board with ``network.WLAN`` (ESP32, Pico W): join the Wi-Fi
    named in ``path`` (``{"ssid": ..., "password": ...}``, written by
    ``moteseal flash build --wifi-ssid``) unless already connected. Does
    nothing and returns False on the unix port or without the file. A
    network that is not up within ``timeout_ms`` is reported
    (``report("wifi_down", attempt)``) and tried again after a backoff
    (1 s, doubling to ``backoff_max_ms``), for as long as it takes: a
    device without its network has nothing else to do, and a crash would
    only restart the same wait. Returns True once up (``wifi_up``)."""
    try:
        import network
        with open(path) as f:
            cfg = json.load(f)
    except (ImportError, OSError):
        return False
    from time import sleep_ms
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    attempt = 0
    pause = 1000
    while True:
        attempt += 1
        if not wlan.isconnected():
            try:
                wlan.connect(cfg["ssid"], cfg.get("password", ""))
            except OSError:
                pass  # e.g. already connecting: wait as for any other attempt
        for _ in range(timeout_ms // 100):
            if wlan.isconnected():
                if report:
                    report("wifi_up", attempt)
                return True
            sleep_ms(100)
        if report:
            report("wifi_down", attempt)
        try:
            wlan.disconnect()
        except OSError:
            pass
        sleep_ms(pause)
        pause = min(pause * 2, backoff_max_ms)


def _update_boot():
    # Rule 4: no state file, no update ever finished here: nothing to load.
    # Without updates in the build (_UPDATES) the body folds away.
    if _UPDATES:
        import os
        try:
            os.stat(".xstate")
        except OSError:
            return None
        import micropython_port.app_update as U
        try:
            return U.boot()
        finally:  # its modules leave the heap (Rule 1); a transfer loads them again
            for m in ("micropython_port.app_update", "micropython_port.update_state"):
                sys.modules.pop(m, None)
                pkg = sys.modules.get(m.split(".")[0])
                if hasattr(pkg, m.split(".")[1]):
                    delattr(pkg, m.split(".")[1])
            gc.collect()
    return None


def _print_event(name, detail):
    print(json.dumps({"event": name, "detail": detail}))


def _start(argv, read, on_command):
    # Options, Wi-Fi, the bundle, then the application (Rule 1); returns
    # the device and run()'s arguments.
    opts = _args(argv)
    trial = _update_boot()  # Rule 4
    network_up(report=None if "quiet" in opts else _print_event)
    bundle = load_bundle(opts.get("bundle", "moteseal.bundle"))
    from micropython_port.app import Device
    from micropython_port.backend import paths
    line = paths()
    print("moteseal paths " + line)  # Rule 3
    for prim, mod in (("x25519", "_x25519_py"), ("aead", "_chachapoly_py")):
        if prim + "=python" in line:
            try:
                __import__("micropython_port." + mod)
            except ImportError:
                raise LocalError(prim + ": the fast path did not load and this build has no fallback")
    gc.collect()
    link = {}
    if "host" in opts:
        link["host"] = opts["host"]
    if "port" in opts:
        link["port"] = int(opts["port"])
    if "serial" in opts:
        link["kind"] = "serial"
        link["port"] = opts["serial"]
    dev = Device(bundle, opts.get("state", "moteseal.ctr"), link,
                 None if "quiet" in opts else _print_event, read, on_command,
                 int(opts.get("retain", 16)))
    if "interval-ms" in opts:
        dev.interval_ms = int(opts["interval-ms"])
    if "hs-timeout-ms" in opts:
        dev.hs_timeout_ms = int(opts["hs-timeout-ms"])
    if "resend-s" in opts:
        dev.resend_s = int(opts["resend-s"])
    if "drain-ms" in opts:
        dev.drain_ms = int(opts["drain-ms"])
    if _UPDATES and trial == "trial":
        dev.trial = True
        dev.trial_s = int(opts.get("trial-s", 120))
    if _UPDATES and trial and dev.log:
        dev.log("update", trial)
    run_ms = int(opts["run-ms"]) if "run-ms" in opts else None
    return (dev, int(opts["count"]) if "count" in opts else None, int(opts.get("linger-ms", 0)),
            run_ms)


def main(argv=None, read=None, on_command=None):
    """Run the device: ``read(w)`` adds the user's fields to each reading
    and ``on_command(buf, n)`` gets the peer's commands (see
    ``micropython_port.app.Device``). Options (unix port; a board runs with
    none): --bundle PATH (default moteseal.bundle), --state PATH (counter
    file, default moteseal.ctr), --count N, --interval-ms MS, --linger-ms
    MS, --hs-timeout-ms MS, --run-ms MS (stop after that long), --host H,
    --port P, --serial PATH, --trial-s S (how long a new application has
    to reach its peer before the next boot rolls it back, default 120), --retain N (readings kept until the peer
    acknowledges them, default 16, 0 for none), --resend-s S, --drain-ms MS
    (how long to wait for the last acknowledgements), --quiet. Prints JSON event lines and a summary
    line; returns the summary. Removes ``load_bundle`` and ``network_up``
    from this module once they have run (Rule 1)."""
    global _args, load_bundle, network_up, _start, _update_boot  # deleted once run (Rule 1)
    # Rule 1: collect every 4 KiB allocated, so start-up garbage is gone
    # before long-lived objects land between it (measured: 4 KiB less heap
    # needed; after the handshake nothing allocates, so it costs nothing).
    if hasattr(gc, "threshold"):  # absent where MICROPY_GC_ALLOC_THRESHOLD is off
        gc.threshold(4096)
    dev, count, linger_ms, run_ms = _start(sys.argv if argv is None else argv, read, on_command)
    del _args, load_bundle, network_up, _start, _update_boot
    gc.collect()
    summary = dev.run(count, linger_ms, run_ms)
    gc.collect()
    summary["event"] = "summary"
    summary["interval_ms"] = dev.interval_ms
    summary["mem_free"] = gc.mem_free()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

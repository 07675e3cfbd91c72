"""Transfer rate to a MicroPython device and its heap during transfers. Not
a test: figures vary by machine and load.

    python3 bench/bench_transfer.py [--repeats N] [--kib K] [--heap 88k] [--rate R]

Sets up what ``tests/e2e/test_transfer_mp.py`` runs: real Mosquitto on
loopback, a real ``moteseal gateway run``, the hub (``moteseal.hub.Hub``,
in this process) and the device's flash build (``.mpy``) on the MicroPython
unix port, sending a reading a second. Then pushes a K KiB file N times
(versions 1..N, one after the other; at most R pieces a second, the hub's
default 400, or ``--rate 0``: paced only by the device's acknowledgements)
and prints:

- the transfer rate in KiB/s (file size / time from queueing to the
  device's ``installed``): median and spread (min..max) over the repeats;
- the device's free heap (``gc.mem_free()`` in its summary line) at the end
  of its run, with the transfer receiver loaded, in the heap it was given.

A single configuration, so no ABAB interleaving: the figure is a rate,
not a comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gateway.broker import LocalBroker  # noqa: E402
from moteseal.flash.build import build  # noqa: E402
from tests.cli_fleet import make_fleet  # noqa: E402
from tests.conftest import GatewayProcess  # noqa: E402
from tests.mp_helpers import mp_binary  # noqa: E402

DEVICE = "mote-1"


def _wait(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kib", type=int, default=100)
    ap.add_argument("--heap", default="88k")
    ap.add_argument("--rate", type=float, default=None, help="pieces/s (default: the hub's)")
    args = ap.parse_args()
    from moteseal.hub.config import TEMPLATE, load
    from moteseal.hub.service import Hub

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        root = Path(tmp)
        broker = LocalBroker(root / "broker", auth=True)
        for user, role in (("gw", "gateway"), ("hub1", "device")):
            broker.add(user, role)
        broker.start()
        gw = GatewayProcess(broker, root / "gw", peers=["hub1"]).start()
        dev_proc = None
        hub = None
        stop = threading.Event()
        try:
            env, reg = make_fleet(root, broker, [DEVICE], peer="hub1")
            os.chmod(root / "hub1.mqtt", 0o600)
            cfg = TEMPLATE.format(registry=reg, peer="hub1").replace(
                "port = 1883", f"port = {broker.port}", 1)
            (root / "hub.toml").write_text(cfg.replace("[dashboard]\nenabled = true",
                                                       "[dashboard]\nenabled = false"))
            reports: list[dict] = []
            hub = Hub(load(str(root / "hub.toml")), on_report=reports.append).start()
            if args.rate is not None:
                hub.transfers.rate = args.rate
            threading.Thread(target=hub.run, args=(stop,), daemon=True).start()
            flash = root / "flash"
            bundle = root / "bundles" / f"{DEVICE}.bundle"
            build(bundle, flash, "x64")
            run_ms = 15000 + args.repeats * 15000
            out = open(root / "device.out", "w")
            dev_proc = subprocess.Popen(
                [mp_binary(), "-X", f"heapsize={args.heap}", str(flash / "main.py"), "--bundle",
                 str(bundle), "--state", str(root / "ctr"), "--interval-ms", "1000",
                 "--run-ms", str(run_ms), "--quiet"],
                stdout=out, stderr=subprocess.STDOUT, cwd=flash,
                env={"MICROPYPATH": f"{flash}:.frozen", "PATH": "/usr/bin:/bin"})
            if not _wait(lambda: any(r["event"] == "telemetry" for r in reports), 60):
                sys.exit("the device never reached the hub")
            data = os.urandom(args.kib * 1024)
            rates = []
            for v in range(1, args.repeats + 1):
                t0 = time.perf_counter()
                row = hub.push(DEVICE, data, b"bench.bin", version=v)
                if not _wait(lambda: (hub.transfer(row) or {}).get("state") not in
                             ("queued", "sending"), 120):
                    sys.exit(f"transfer {v} did not finish: {hub.transfer(row)}")
                dt = time.perf_counter() - t0
                st = hub.transfer(row)
                if st["state"] != "installed":
                    sys.exit(f"transfer {v}: {st}")
                rates.append(args.kib / dt)
            dev_proc.wait(run_ms / 1000 + 60)
            dev_proc = None
            lines = [json.loads(x) for x in (root / "device.out").read_text().splitlines()
                     if x.startswith("{")]
            summary = lines[-1] if lines and lines[-1].get("event") == "summary" else {}
            telemetry = sum(1 for r in reports if r["event"] == "telemetry")
            print(f"transfer of {args.kib} KiB to a MicroPython device over MQTT on loopback "
                  f"(Mosquitto, gateway, hub; {args.repeats} repeats; rate "
                  f"{hub.transfers.rate:g} pieces/s):")
            print(f"  rate   median {statistics.median(rates):.1f} KiB/s  "
                  f"spread {min(rates):.1f}..{max(rates):.1f} KiB/s")
            print(f"  device heap {args.heap}: mem_free {summary.get('mem_free', '?')} bytes at the "
                  f"end of its run with the receiver loaded; bad envelopes "
                  f"{summary.get('bad_envelopes', '?')}")
            print(f"  telemetry stored meanwhile: {telemetry} readings")
        finally:
            stop.set()
            if dev_proc is not None:
                dev_proc.kill()
                dev_proc.wait(10)
            if hub is not None:
                time.sleep(0.3)
                hub.close()
            gw.stop()
            broker.stop()


if __name__ == "__main__":
    main()

"""The examples in examples/ run on the real MicroPython unix port, each with
its sensor object replaced by a simulated one behind the same interface
(the hardware paths are not tested here: examples/README.md), against a
real Mosquitto, ``moteseal gateway run`` and the CPython peer:

- Pico W internal temperature (ADC 4): t_cC agrees with the RP2040
  datasheet's formula in floating point;
- ESP32 + BME280: the driver's integer compensation gives the datasheet's
  worked example (25.08 C, 100653 Pa) and a humidity within 0.5 %RH of
  the datasheet's floating-point formula, through a simulated I2C bus;
- deep sleep: two wakes, each one reading in handshake message 1 (0-RTT),
  the counter on flash advancing a chunk per wake.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.micropython.test_mp_device import (  # noqa: F401  (fixtures)
    Fleet, _mqtt_bundle, fleet, mqtt_setup)
from tests.mp_helpers import ROOT, mp_binary
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.timeout(240)]

EXAMPLES = ROOT / "examples"


def _run(fleet: Fleet, tmp_path: Path, code: str, *args: str, heap: str = "96k") -> list[dict[str, Any]]:
    flash = fleet.flash("mqtt")
    script = tmp_path / "run_example.py"
    script.write_text(code)
    p = subprocess.run([mp_binary(), "-X", f"heapsize={heap}", str(script), *args],
                       capture_output=True, text=True, timeout=120, cwd=flash,
                       env={"MICROPYPATH": f"{flash}:{EXAMPLES}:.frozen", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    return [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]


PICO = """
import sys
import pico_w_temperature as ex
class SimulatedADC:  # machine.ADC's interface: read_u16()
    def __init__(self):
        self.raw = 13000
    def read_u16(self):
        self.raw += 700
        return self.raw
ex.adc = SimulatedADC()
ex.main(sys.argv)
"""


def test_pico_w_internal_temperature(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    lines = _run(fleet, tmp_path, PICO, "--bundle", str(_mqtt_bundle(fleet, broker)),
                 "--state", str(tmp_path / "ctr"), "--count", "3", "--interval-ms", "0",
                 "--linger-ms", "200")
    assert lines[-1]["readings"] == 3
    assert wait_for(lambda: len(peer.telemetry()) == 3, timeout=20)
    for r in peer.telemetry():
        raw = r["reading"]["raw"]
        celsius = 27 - (raw * 3.3 / 65535 - 0.706) / 0.001721
        assert abs(r["reading"]["t_cC"] - celsius * 100) < 60  # 1 mV steps: 0.58 C
    assert [r["reading"]["raw"] for r in peer.telemetry()] == [13700, 14400, 15100]


# The datasheet's worked example (BST-BME280-DS002, 8.1/8.2 and BMP280's
# 3.12): T1..T3, P1..P9; humidity calibration of a typical part.
T_CAL = (27504, 26435, -1000)
P_CAL = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
H_CAL = (75, 362, 0, 313, 50, 30)
ADC_T, ADC_P, ADC_H = 519888, 415148, 30000


def _bme280_registers() -> bytes:
    regs = bytearray(256)
    regs[0xD0] = 0x60
    regs[0x88:0x88 + 24] = struct.pack("<Hhh", *T_CAL) + struct.pack("<Hhhhhhhhh", *P_CAL)
    h1, h2, h3, h4, h5, h6 = H_CAL
    regs[0xA1] = h1
    regs[0xE1:0xE8] = struct.pack("<hB", h2, h3) + bytes(
        [(h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF]) + struct.pack("<b", h6)
    regs[0xF7:0xFF] = bytes([ADC_P >> 12, (ADC_P >> 4) & 0xFF, (ADC_P & 0x0F) << 4,
                             ADC_T >> 12, (ADC_T >> 4) & 0xFF, (ADC_T & 0x0F) << 4,
                             ADC_H >> 8, ADC_H & 0xFF])
    return bytes(regs)


def _regs_file(tmp_path: Path, regs: bytes) -> str:
    path = tmp_path / "bme280.hex"
    path.write_text(regs.hex())
    return str(path)


def _humidity_float() -> float:
    # The datasheet's double-precision formula (section 8.1), with t_fine
    # from the integer temperature formula.
    t1, t2, t3 = T_CAL
    v1 = ((ADC_T >> 3) - (t1 << 1)) * t2 >> 11
    v2 = (((ADC_T >> 4) - t1) * ((ADC_T >> 4) - t1) >> 12) * t3 >> 14
    h1, h2, h3, h4, h5, h6 = H_CAL
    v = (v1 + v2) - 76800.0
    v = (ADC_H - (h4 * 64.0 + h5 / 16384.0 * v)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v)))
    v = v * (1.0 - h1 * v / 524288.0)
    return min(max(v, 0.0), 100.0)


BME = """
import sys
from binascii import unhexlify
import esp32_bme280 as ex
class SimulatedBME280Bus:  # machine.I2C's interface, a BME280 at 0x76 behind it
    def __init__(self, regs):
        self.regs = bytearray(regs)
        self.writes = []
    def readfrom_mem(self, addr, reg, n):
        if addr != 0x76:
            raise OSError(19)
        return bytes(self.regs[reg:reg + n])
    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = self.readfrom_mem(addr, reg, len(buf))
    def writeto_mem(self, addr, reg, data):
        self.writes.append((reg, bytes(data)))
with open(sys.argv.pop()) as f:  # the registers, hex (a long argv crashes the unix port)
    ex.i2c = SimulatedBME280Bus(unhexlify(f.read()))
ex.main(sys.argv)
print('{"event": "writes", "detail": %d}' % len(ex.i2c.writes))
"""


def test_esp32_bme280_driver_matches_the_datasheet(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    lines = _run(fleet, tmp_path, BME, "--bundle", str(_mqtt_bundle(fleet, broker)),
                 "--state", str(tmp_path / "ctr"), "--count", "2", "--interval-ms", "0",
                 "--linger-ms", "200", _regs_file(tmp_path, _bme280_registers()))
    assert lines[-1] == {"event": "writes", "detail": 3}  # ctrl_hum, ctrl_meas, config
    assert wait_for(lambda: len(peer.telemetry()) == 2, timeout=20)
    for r in peer.telemetry():
        got = r["reading"]
        assert got["t_cC"] == 2508 and got["p_Pa"] == 100653
        assert abs(got["rh_pm"] / 10 - _humidity_float()) < 0.5


def test_esp32_bme280_missing_sensor_skips_readings(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    regs = bytearray(_bme280_registers())
    regs[0xD0] = 0x58  # a BMP280, not a BME280: the driver refuses it
    lines = _run(fleet, tmp_path, BME, "--bundle", str(_mqtt_bundle(fleet, broker)),
                 "--state", str(tmp_path / "ctr"), "--count", "2", "--interval-ms", "0",
                 _regs_file(tmp_path, bytes(regs)))
    assert [ln["detail"] for ln in lines if ln["event"] == "read_failed"] == ["OSError", "OSError"]
    summary = [ln for ln in lines if ln["event"] == "summary"][0]
    assert summary["read_errors"] == 2 and summary["readings"] == 0


SLEEPY = """
import sys, json
import esp32_deep_sleep as ex
class SimulatedADC:
    def read_u16(self):
        return 40000
ex.adc = SimulatedADC()
print(json.dumps(ex.wake(sys.argv[1], sys.argv[2])))
"""


def test_deep_sleep_sends_one_0rtt_reading_per_wake(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    state = tmp_path / "ctr"
    for wake in (1, 2):
        counts = _run(fleet, tmp_path, SLEEPY, str(_mqtt_bundle(fleet, broker)), str(state))[-1]
        assert counts["handshakes"] == 1 and counts["data"] == 0 and counts["readings"] == 1
        assert wait_for(lambda: len(peer.telemetry()) == wake, timeout=20)
        assert state.read_text() == str(32 * wake)  # a new chunk per boot
    assert [r["via"] for r in peer.telemetry()] == ["hs1", "hs1"]
    assert [r["reading"]["bat_mV"] for r in peer.telemetry()] == [40000 * 6600 // 65535] * 2

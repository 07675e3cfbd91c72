"""ESP32 in deep sleep: wake, send one reading in handshake message 1
(0-RTT: no round trip before the data), wait for the broker's PUBACK, sleep
again. Each wake is a boot: the session is gone, so every reading rides in
a new message 1, and the message-1 counter reserves a new chunk on flash
(one flash write per wake).

On the board, after ``moteseal flash deploy``:
    mpremote cp examples/esp32_deep_sleep.py :main.py

Owning the loop: this file uses ``load_bundle`` and ``Device`` directly
instead of ``micropython_port.main.main``. Untested on hardware here:
tests/e2e/test_examples.py runs ``wake`` on the MicroPython unix port with
``adc`` and ``deepsleep`` replaced.
"""

import micropython_port.main as m

SLEEP_MS = 15 * 60 * 1000

try:
    from machine import ADC, Pin, deepsleep
    adc = ADC(Pin(34))  # a battery divider, say
except (ImportError, AttributeError, ValueError):
    adc = None  # not an ESP32: tests assign a simulated ADC
    deepsleep = None


def read(w):
    w.int("bat_mV", adc.read_u16() * 6600 // 65535)  # a 1:2 divider on 3.3 V


def wake(bundle_path="moteseal.bundle", state_path="moteseal.ctr", link=None, log=None):
    """One wake: Wi-Fi, one reading, its PUBACK (or the handshake timeout);
    returns the device's counts."""
    m.network_up()
    bundle = m.load_bundle(bundle_path)  # before the application (memory)
    from micropython_port.app import Device
    dev = Device(bundle, state_path, link, log, read)
    return dev.run(count=1, linger_ms=0)


if __name__ == "__main__":
    wake()
    deepsleep(SLEEP_MS)

"""ESP32 with a BME280 on I2C (SDA 21, SCL 22): temperature, humidity and
pressure in every encrypted reading, as fixed-point ints.

On the board, after ``moteseal flash deploy``:
    mpremote cp examples/bme280.py :bme280.py
    mpremote cp examples/esp32_bme280.py :main.py

Fields: ``t_cC`` (1/100 degree C), ``rh_pm`` (1/10 %RH), ``p_Pa`` (Pa).
A sensor that does not answer makes ``read`` raise ``OSError``: that
reading is skipped and ``read_failed`` logged; the device keeps running.
Untested on hardware here: tests/e2e/test_examples.py runs this file on the
MicroPython unix port with ``i2c`` replaced by a simulated BME280.
"""

import micropython_port.main as m

try:
    from machine import I2C, Pin
    i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=400000)
except (ImportError, AttributeError, ValueError):
    i2c = None  # not an ESP32: tests assign a simulated bus

sensor = None  # made on the first reading, so a missing sensor is a read_failed


def read(w):
    global sensor
    if sensor is None:
        from bme280 import BME280
        sensor = BME280(i2c)
    t_cc, rh_pm, p_pa = sensor.read_into()
    w.int("t_cC", t_cc)
    w.int("rh_pm", rh_pm)
    w.int("p_Pa", p_pa)


def main(argv=None):
    return m.main(argv, read=read)


if __name__ == "__main__":
    main()

"""Raspberry Pi Pico W: the RP2040's internal temperature sensor (ADC 4),
one encrypted reading every interval (the bundle's MQTT link over Wi-Fi).

On the board, after ``moteseal flash deploy``:
    mpremote cp examples/pico_w_temperature.py :main.py

Fields: ``t_cC`` (hundredths of a degree Celsius, an int: nothing is
allocated per reading) and ``raw`` (the ADC count, for calibration).
Untested on hardware here: tests/e2e/test_examples.py runs this file on
the MicroPython unix port with ``adc`` replaced by a simulated ADC.
"""

import micropython_port.main as m

try:
    from machine import ADC
    adc = ADC(4)  # the internal sensor's channel on the RP2040
except (ImportError, AttributeError, ValueError):
    adc = None  # not a Pico: tests assign an object with read_u16()


def centi_celsius(raw):
    """RP2040 datasheet 4.9.5: T = 27 - (V - 0.706) / 0.001721, with V from
    the 16-bit reading of a 3.3 V ADC; in small ints (mV, 1/100 degree)."""
    mv = raw * 3300 // 65535
    return 2700 - (mv - 706) * 100000 // 1721


def read(w):
    raw = adc.read_u16()
    w.int("t_cC", centi_celsius(raw))
    w.int("raw", raw)


def main(argv=None):
    return m.main(argv, read=read)


if __name__ == "__main__":
    main()

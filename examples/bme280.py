"""A small BME280 driver (temperature, humidity, pressure over I2C) with the
datasheet's integer compensation (Bosch BST-BME280-DS002, section 4.2.3 and
8.2), for ``examples/esp32_bme280.py``.

``BME280(i2c, addr=0x76)`` reads the calibration once; ``read_into()``
triggers nothing (the sensor runs in normal mode) and returns
``(t_cC, rh_pm, p_Pa)``: hundredths of a degree Celsius, tenths of a percent
of relative humidity, pascal. Raises ``OSError`` if the sensor does not
answer (the device skips that reading and logs ``read_failed``).

Memory: the raw-data buffer is allocated once. Temperature and humidity
stay in small ints; the pressure formula's intermediates pass 2**30, so on
32-bit ports it allocates a few big ints per reading.
"""

_CHIP_ID = 0x60


def _s16(v):
    return v - 65536 if v > 32767 else v


def _s8(v):
    return v - 256 if v > 127 else v


class BME280:
    def __init__(self, i2c, addr=0x76):
        self.i2c = i2c
        self.addr = addr
        if i2c.readfrom_mem(addr, 0xD0, 1)[0] != _CHIP_ID:
            raise OSError(19)  # ENODEV: no BME280 at this address
        c = i2c.readfrom_mem(addr, 0x88, 26)
        self.t = (c[0] | c[1] << 8, _s16(c[2] | c[3] << 8), _s16(c[4] | c[5] << 8))
        self.p = [c[6] | c[7] << 8] + [_s16(c[i] | c[i + 1] << 8) for i in range(8, 24, 2)]
        h = i2c.readfrom_mem(addr, 0xE1, 7)
        # H4 and H5 are signed 12-bit values sharing register 0xE5.
        self.h = (c[25], _s16(h[0] | h[1] << 8), h[2], _s8(h[3]) << 4 | h[4] & 0x0F,
                  _s8(h[5]) << 4 | h[4] >> 4, _s8(h[6]))
        # Humidity x1 (ctrl_hum must precede ctrl_meas), then temperature
        # and pressure x1 in normal mode, 1000 ms standby.
        i2c.writeto_mem(addr, 0xF2, b"\x01")
        i2c.writeto_mem(addr, 0xF4, b"\x27")
        i2c.writeto_mem(addr, 0xF5, b"\xa0")
        self._raw = bytearray(8)

    def read_into(self):
        self.i2c.readfrom_mem_into(self.addr, 0xF7, self._raw)
        r = self._raw
        adc_p = r[0] << 12 | r[1] << 4 | r[2] >> 4
        adc_t = r[3] << 12 | r[4] << 4 | r[5] >> 4
        adc_h = r[6] << 8 | r[7]
        t1, t2, t3 = self.t
        v1 = ((adc_t >> 3) - (t1 << 1)) * t2 >> 11
        v2 = (((adc_t >> 4) - t1) * ((adc_t >> 4) - t1) >> 12) * t3 >> 14
        t_fine = v1 + v2
        t_cc = (t_fine * 5 + 128) >> 8
        return t_cc, self._humidity(adc_h, t_fine), self._pressure(adc_p, t_fine)

    def _humidity(self, adc_h, t_fine):
        # BME280_compensate_H_int32, in 1/1024 %RH, returned in 0.1 %RH.
        h1, h2, h3, h4, h5, h6 = self.h
        v = t_fine - 76800
        v = (((adc_h << 14) - (h4 << 20) - h5 * v + 16384) >> 15) * \
            (((((v * h6 >> 10) * ((v * h3 >> 11) + 32768) >> 10) + 2097152) * h2 + 8192) >> 14)
        v -= ((v >> 15) * (v >> 15) >> 7) * h1 >> 4
        v = min(max(v, 0), 419430400)
        return ((v >> 12) * 10) >> 10

    def _pressure(self, adc_p, t_fine):
        # BME280_compensate_P_int64, in Pa.
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.p
        v1 = t_fine - 128000
        v2 = v1 * v1 * p6 + ((v1 * p5) << 17) + (p4 << 35)
        v1 = ((v1 * v1 * p3) >> 8) + ((v1 * p2) << 12)
        v1 = ((1 << 47) + v1) * p1 >> 33
        if v1 == 0:
            return 0  # the datasheet's guard against a division by zero
        p = 1048576 - adc_p
        p = (((p << 31) - v2) * 3125) // v1
        v1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        v2 = (p8 * p) >> 19
        return (((p + v1 + v2) >> 8) + (p7 << 4)) >> 8

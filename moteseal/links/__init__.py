"""CPython links that carry envelopes: MQTT (paho) and serial (pyserial)."""

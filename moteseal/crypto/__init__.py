"""CPython implementations of the device core's backend contract
(``device/backend.py``): primitives from PyNaCl and hashlib/hmac only."""

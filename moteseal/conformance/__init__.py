"""Conformance tools: the vector runner (CPython and MicroPython), the
vector generator and the stdio interop driver. This file stays empty so
that MicroPython can import the runner."""

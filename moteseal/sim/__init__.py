"""Simulated devices and the demo (CPython only)."""

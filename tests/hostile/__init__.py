"""Adversarial tests: a malicious relay between devices and their peer, at the
sans-I/O level (deterministic, fast). The soak test under real faults lives
in ``tests/e2e/test_soak.py``; fuzz targets in ``tests/fuzz/``."""

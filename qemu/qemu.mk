# The qemu lane's make targets, included by the top-level Makefile.
# `make test` runs tests/qemu too (skipped, with the reason, where the
# firmware cannot be built); `make test-qemu` runs the lane alone.
.PHONY: qemu-setup qemu-fw test-qemu
qemu-setup:
	PYTHON=$(PYTHON) ./qemu/setup.sh

qemu-fw:
	$(PYTHON) qemu/qemu_fw.py

test-qemu:
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PYTHON) -m pytest -q tests/qemu --durations=5

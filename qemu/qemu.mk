# The qemu lane's make targets; the top-level Makefile can `include qemu/qemu.mk`.
PYTHON ?= python3

.PHONY: qemu-setup qemu-fw test-qemu
qemu-setup:
	./qemu/setup.sh

qemu-fw:
	$(PYTHON) qemu/qemu_fw.py

test-qemu:
	$(PYTHON) -m pytest -q tests/qemu --durations=5

# The two commands the README gives: `make setup` and `make test`.
# Both use the virtual environment in .venv/ that `make setup` creates.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup test
setup:
	./scripts/setup.sh

test:
	@test -x $(PYTHON) || { echo "no $(VENV)/: run 'make setup' first" >&2; exit 2; }
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PYTHON) -m pytest -q

include qemu/qemu.mk

# The two commands the README gives: `make setup` and `make test`.
PYTHON ?= python3

.PHONY: setup test
setup:
	./scripts/setup.sh

test:
	$(PYTHON) -m pytest -q

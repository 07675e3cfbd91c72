"""Stand-in ``json`` for the qemu lane's firmware, which has no json module
(the core's extmod/modjson.c is not in the PyPI sdist). ``moteseal.conformance.runner``
imports json but reads files with it only in ``run_paths``; the lane calls
``run_vectors`` with the decoded document instead, so nothing here parses.
Packed into the target's file table by tests/qemu/conftest.py; never part of
a device build."""


_EOPNOTSUPP = 95


def load(f):
    raise OSError(_EOPNOTSUPP, "json.load: the qemu test firmware has no json")


def loads(s):
    raise OSError(_EOPNOTSUPP, "json.loads: the qemu test firmware has no json")

"""Stand-in ``json`` for the qemu lane's firmware, which has no json module
(the core's extmod/modjson.c is not in the PyPI sdist). ``moteseal.conformance.runner``
imports json but reads files with it only in ``run_paths``; the lane calls
``run_vectors`` with the decoded document instead, so nothing here parses.
Packed into the target's file table by tests/qemu/conftest.py; never part of
a device build."""


def load(f):
    raise NotImplementedError("json.load: not on the qemu test firmware")


def loads(s):
    raise NotImplementedError("json.loads: not on the qemu test firmware")

"""Optional features of a device's flash build (``moteseal flash build
--features``; docs/micropython.md, "Flash size").

A feature is a set of modules a build ships only when asked, and the flags
(``_NAME = const(1)`` lines) the build turns to ``const(0)`` in the
modules that test them, so that mpy-cross folds the feature's branches away
and nothing imports its modules.

Invariants:
- Rule 1: a flag line the build cannot find exactly once is an error
  (``FlashError``), like a ``HOST_ONLY`` name: a renamed flag never leaves
  a feature's code in a build that lacks its modules.
- Rule 2: what a build leaves out fails clearly when a program asks for
  it: ``LocalError("no groups")``, ``LocalError("no fields")``, a transfer
  frame dropped and counted (``micropython_port/app.py``); the boot step
  skips updates (``micropython_port/main.py``).
"""

from __future__ import annotations

from typing import Iterable

from moteseal.flash.errors import FlashError

__all__ = ["DEFAULT_FEATURES", "FEATURES", "clear_flags", "feature_flags", "parse_features"]

FEATURES = {
    # Group messages (device/group.py): a build without them refuses
    # ``Device(groups=N)`` with LocalError("no groups").
    "groups": (("device/group", "micropython_port/app_groups"),
               {"micropython_port/app": "_GROUPS"}),
    # Transfers and application updates (docs/protocol.md, "Transfers"): a
    # build without them skips the boot step and drops a transfer frame,
    # counted in ``bad_envelopes``.
    "updates": (("device/transfer", "micropython_port/update", "micropython_port/update_state",
                 "micropython_port/app_update"),
                {"micropython_port/app": "_UPDATES", "micropython_port/main": "_UPDATES"}),
    # The user's fields in readings (``main(read=...)``, device/reading.py):
    # a build without them refuses ``read`` with LocalError("no fields").
    "fields": (("device/reading",), {"micropython_port/app": "_FIELDS"}),
}
# The default "MQTT device": readings with the user's fields, commands,
# end-to-end acknowledgements. Groups and updates are opt-in: each needs
# the hub's side set up for it (a group, a pushed application), and updates
# alone cost 5.7 KiB of an armv7m build's 40 (docs/micropython.md, "Flash
# size"). A device flashed without updates cannot be updated over the air:
# build with ``--features default,updates`` for one that must be.
DEFAULT_FEATURES = ("fields",)


def parse_features(text: str) -> tuple[str, ...]:
    """``"groups,updates"`` (or ``"default"``, ``"all"``, ``"none"``, or
    ``"default,groups"``) as a sorted tuple of ``FEATURES`` names. Raises
    ``FlashError`` (exit 2) for an unknown name."""
    out: set[str] = set()
    for name in (n.strip() for n in text.split(",")):
        if name == "default":
            out |= set(DEFAULT_FEATURES)
        elif name == "all":
            out |= set(FEATURES)
        elif name in FEATURES:
            out.add(name)
        elif name not in ("none", ""):
            raise FlashError(f"unknown feature {name!r}; features: {', '.join(FEATURES)} "
                             "(or default, all, none)", 2)
    return tuple(sorted(out))


def feature_flags(features: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The flags to turn off, per module, in a build with ``features``."""
    off: dict[str, tuple[str, ...]] = {}
    for name, (_, flags) in FEATURES.items():
        if name not in features:
            for module, flag in flags.items():
                off[module] = off.get(module, ()) + (flag,)
    return off


def clear_flags(source: str, flags: Iterable[str]) -> str:
    """``source`` with each ``NAME = const(1)`` line of ``flags`` (at the
    start of a line, exactly once) turned to ``NAME = const(0)``. Raises
    ``FlashError`` for a flag the source does not set that way."""
    for flag in flags:
        line = f"\n{flag} = const(1)"
        if source.count(line) != 1:
            raise FlashError(f"feature flag {flag} = const(1) is not set once in this module")
        source = source.replace(line, f"\n{flag} = const(0)")
    return source

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

from typing import Any, Iterable

from moteseal.flash.errors import FlashError

__all__ = ["DEFAULT_FEATURES", "FEATURES", "arch_flags", "clear_flags", "feature_flags", "link_flags",
           "parse_features", "plain_mqtt", "suite_flags", "target_flags", "THUMB1_ARCHES", "THUMB2_ARCHES"]

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


# Flags a build turns off for what its target never uses (not features: the
# bundle and the arch decide them, not ``--features``); cleared like the
# features' flags, with the same Rule 1.
# The ARMv7-M arches (asm_thumb paths) and ARMv6-M (asm_thumb1), as
# ``moteseal.flash.build`` ships them.
THUMB2_ARCHES = ("armv7m", "armv7em", "armv7emsp", "armv7emdp")
THUMB1_ARCHES = ("armv6m",)


def plain_mqtt(link: dict[str, Any]) -> bool:
    """An MQTT link without TLS (no ``ca``, no ``pin``)."""
    return link.get("kind") == "mqtt" and "ca" not in link and "pin" not in link


def arch_flags(arch: str) -> dict[str, tuple[str, ...]]:
    """The path flags (``_THUMB2``, ``_THUMB1``, ``_VIPER`` in ``x25519``
    and ``chacha20poly1305``) a build for ``arch`` turns off (as
    ``FEATURES``' flags): those of the native modules it never ships
    (``build`` leaves the viper X25519 and AEAD out where an assembler
    path ships, and each assembler path out of the other arches)."""
    if arch in THUMB2_ARCHES:
        off: tuple[str, ...] = ("_THUMB1", "_VIPER")
    elif arch in THUMB1_ARCHES:
        off = ("_THUMB2", "_VIPER")
    else:
        off = ("_THUMB2", "_THUMB1")
    return {"micropython_port/x25519": off, "micropython_port/chacha20poly1305": off}


def suite_flags(suite: str) -> dict[str, tuple[str, ...]]:
    """The flags a build for a device with ``suite`` turns off: BLAKE2s in
    the backend for a SHA-256 suite (``blake2s`` is not in that build:
    ``unused_modules``)."""
    return {} if suite.endswith("_BLAKE2s") else {"micropython_port/backend": ("_BLAKE2S",)}


def link_flags(link: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The flags a build for a device with ``link`` turns off (as
    ``FEATURES``' flags): ``name_failure``'s TLS failures on a plain-TCP
    MQTT link, ``Device``'s UART link on an MQTT one (``uart_link`` is not
    in that build: ``unused_modules``)."""
    off: dict[str, tuple[str, ...]] = {}
    if plain_mqtt(link):
        off["micropython_port/mqtt_tls"] = ("_TLS",)
    if link.get("kind") == "mqtt":
        off["micropython_port/app"] = ("_SERIAL",)
    return off


def target_flags(arch: str, link: dict[str, Any], suite: str, pad: bool) -> dict[str, tuple[str, ...]]:
    """Every flag a build for this arch, link and suite turns off, per
    module: ``arch_flags``, ``link_flags``, ``suite_flags``, and padding's
    in ``device/session`` for a bundle without a pad policy (``pad``
    False; ``device/padding`` is not in that build)."""
    off: dict[str, tuple[str, ...]] = {}
    for flags in (arch_flags(arch), link_flags(link), suite_flags(suite),
                  {} if pad else {"device/session": ("_PAD",)}):
        for module, names in flags.items():
            off[module] = off.get(module, ()) + names
    return off

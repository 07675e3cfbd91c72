"""The ``moteseal`` command line (CPython only).

Every subcommand lives in the module named after what it does and is
registered in ``_SUBCOMMANDS`` below; this file only assembles them, so a
broken optional module names itself instead of breaking the whole CLI.

Exit codes (documented in README.md):
  0  success
  1  the operation ran and found a failure (e.g. a vector failed)
  2  usage error (bad option, missing file, bad config key)
  3  a security refusal (wrong passphrase, permissions, wrong key, revoked)
"""

from __future__ import annotations

import importlib

import click

# (module, attribute) of each click command or group, in --help order.
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("gateway.cli", "gateway_group"),
    ("gateway.broker_cli", "broker_group"),
    ("device.keys_cli", "keygen"),
    ("device.keys_cli", "fingerprint"),
    ("device.keys_cli", "provision"),
    ("device.registry_cli", "registry"),
    ("device.registry_cli", "rotate"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moteseal")
def main() -> None:
    """moteseal: end-to-end encrypted telemetry for constrained devices.

    \b
    Examples:
      moteseal demo --seconds 20
      moteseal keygen --out peer.key
      moteseal vectors run ../shared/vectors/noise_nk_cacophony.json
    """


for _mod, _attr in _SUBCOMMANDS:
    main.add_command(getattr(importlib.import_module(_mod), _attr))


if __name__ == "__main__":
    main()

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

# (module, attribute) of each click command or group; --help lists them sorted.
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("gateway.cli", "gateway_group"),
    ("gateway.broker_cli", "broker_group"),
    ("device.simulate", "device_group"),
    ("device.peer_listen", "peer_group"),
    ("device.demo", "demo"),
    ("device.keys_cli", "keygen"),
    ("device.keys_cli", "fingerprint"),
    ("device.keys_cli", "provision"),
    ("device.registry_cli", "registry"),
    ("device.registry_cli", "rotate"),
    ("device.conformance_cli", "vectors_group"),
    ("device.conformance_cli", "interop_cmd"),
    ("device.flash_cli", "flash_group"),
]


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand (or the
    listing in --help) needs it, so one slow or broken module neither slows
    nor breaks the others."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for mod, attr in _SUBCOMMANDS:
            cmd = self._load(mod, attr)
            if cmd is not None:
                names.add(cmd.name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        for mod, attr in _SUBCOMMANDS:
            loaded = self._load(mod, attr)
            if loaded is not None and loaded.name == name:
                return loaded
        return None

    @staticmethod
    def _load(mod: str, attr: str) -> click.Command | None:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            click.echo(f"moteseal: subcommand {mod}:{attr} unavailable: {e}", err=True)
            return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moteseal")
def main() -> None:
    """moteseal: end-to-end encrypted telemetry for constrained devices.

    \b
    Examples:
      moteseal demo --seconds 20
      moteseal keygen --out peer.key
      moteseal vectors run ../shared/vectors/noise_nk_cacophony.json
    """


if __name__ == "__main__":
    main()

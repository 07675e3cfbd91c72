"""The ``moteseal`` command line (CPython only).

Every subcommand lives in the module named after what it does and is
registered in ``_SUBCOMMANDS`` below; this file only assembles them, so a
broken optional module names itself instead of breaking the whole CLI.

Exit codes (documented in README.md, enforced by tests/host/test_cli_errors.py):
  0  success
  1  the operation ran and found a failure (e.g. a vector failed)
  2  usage error (bad option, missing file, bad config key)
  3  a security refusal (wrong passphrase, permissions, wrong key, revoked)
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from moteseal.cli.errors import describe, fail

# command name -> (module, attribute) of its click command or group.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.cli", "gateway_group"),
    "broker": ("gateway.broker_cli", "broker_group"),
    "device": ("moteseal.sim.simulate", "device_group"),
    "peer": ("moteseal.peer.listen", "peer_group"),
    "demo": ("moteseal.sim.demo", "demo"),
    "keygen": ("moteseal.cli.keys", "keygen"),
    "fingerprint": ("moteseal.cli.keys", "fingerprint"),
    "provision": ("moteseal.cli.keys", "provision"),
    "registry": ("moteseal.cli.registry", "registry"),
    "rotate": ("moteseal.cli.registry", "rotate"),
    "vectors": ("moteseal.cli.vectors", "vectors_group"),
    "interop": ("moteseal.cli.vectors", "interop_cmd"),
    "flash": ("moteseal.cli.flash", "flash_group"),
    "hub": ("moteseal.cli.hub", "hub_group"),
    "readings": ("moteseal.cli.hub", "readings_cmd"),
    "push": ("moteseal.cli.push", "push_cmd"),
    "update": ("moteseal.cli.push", "update_cmd"),
    "send": ("moteseal.cli.hub", "send_cmd"),
    "service": ("moteseal.cli.service", "service_group"),
}

# Commands added to a group that lives below moteseal/ and may not hold them:
# `broker certs` needs the cryptography package, which gateway/ never imports.
_EXTRA_COMMANDS: dict[str, list[tuple[str, str]]] = {
    "broker": [("moteseal.cli.certs", "certs_cmd")],
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or
    --help lists it), so one slow or broken module neither slows nor breaks
    the others."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in _SUBCOMMANDS:
            return cmd
        mod, attr = _SUBCOMMANDS[name]
        try:
            cmd = getattr(importlib.import_module(mod), attr)
            for extra_mod, extra_attr in _EXTRA_COMMANDS.get(name, []):
                extra = getattr(importlib.import_module(extra_mod), extra_attr)
                cmd.add_command(extra)
            return cmd
        except (ImportError, AttributeError) as e:
            click.echo(f"moteseal: subcommand {name} ({mod}:{attr}) unavailable: {e}", err=True)
            return None


    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command and map every failure to the exit-code table
        (module docstring), as one line, never a traceback; with --json also
        as ``{"error": ..., "exit_code": ...}`` on stdout."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:  # before ClickException, its base
            if not as_json:
                e.show()
                sys.exit(e.exit_code)
            fail(e.format_message(), 2, as_json)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code, as_json)
        except click.Abort:
            fail("aborted", 1, as_json)
        except Exception as e:  # noqa: BLE001 (the one place that turns errors into exit codes)
            message, code = describe(e)
            if code is None:
                if os.environ.get("MOTESEAL_DEBUG"):
                    raise
                message = (f"internal error: {type(e).__name__}: {e} "
                           "(MOTESEAL_DEBUG=1 shows the traceback; please report it)")
                code = 1
            fail(message, code, as_json)
        sys.exit(rv if isinstance(rv, int) else 0)


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

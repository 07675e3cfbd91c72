"""The ``moteseal`` entry point: every registered subcommand loads under its
own name, and --help lists them all."""

import click
from click.testing import CliRunner

from moteseal.cli.main import _SUBCOMMANDS, main


def test_every_registered_subcommand_loads_under_its_name():
    ctx = click.Context(main)
    for name in _SUBCOMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None and cmd.name == name


def test_help_lists_every_subcommand_and_unknown_ones_are_usage_errors():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for name in _SUBCOMMANDS:
        assert f"  {name} " in r.output
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2

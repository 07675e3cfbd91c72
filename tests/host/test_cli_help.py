"""Every ``moteseal`` command, walked from the top: its --help shows
examples, and every option and argument it takes says what it is for."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from moteseal.cli.main import _SUBCOMMANDS, main


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, path + [name]
            out += _walk(sub, path + [name])
    return out


COMMANDS = _walk(main, [])


def test_the_walk_reaches_every_subcommand() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert set(_SUBCOMMANDS) <= names
    for expected in ("broker certs", "broker add-device", "flash monitor", "gateway run",
                     "gateway status", "peer listen", "device simulate"):
        assert expected in names


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "moteseal" for p, _ in COMMANDS])
def test_help_has_examples_and_every_option_is_explained(path: list[str], cmd: click.Command) -> None:
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output, f"moteseal {' '.join(path)} --help has no examples"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help and p.help.strip(), f"moteseal {' '.join(path)} {p.opts[0]} has no help text"
    # The examples name the command they belong to.
    assert f"moteseal {' '.join(path)}".strip() in r.output

"""``python -m gateway run --config gateway.toml``: the gateway commands
without the ``moteseal`` entry point, whose package (``device``) would load
the Noise and session modules into the relay's process for nothing."""

from gateway.cli import gateway_group

if __name__ == "__main__":
    gateway_group(prog_name="python -m gateway")

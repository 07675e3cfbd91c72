"""``moteseal gateway``: run the relay and read its status."""

from __future__ import annotations

import errno
import json
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

from gateway.config import ConfigError, load_config
from gateway.logs import JsonLog

__all__ = ["gateway_group"]


@click.group("gateway")
def gateway_group() -> None:
    """The blind relay between devices, peers and links.

    \b
    Examples:
      moteseal gateway run --config gateway.toml
      moteseal gateway status --config gateway.toml --json
      moteseal gateway status --url http://127.0.0.1:9108/metrics
    """


def _load(path: Path) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@gateway_group.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="gateway.toml (see docs/gateway.md).")
def run(config_path: Path) -> None:
    """Relay envelopes until SIGINT or SIGTERM. Logs JSON lines (no payloads).

    Logs go to stderr, or to [gateway] log_file when set (then one line on
    stderr says where). A metrics port in use is named in the error.

    \b
    Examples:
      moteseal gateway run --config gateway.toml
      moteseal gateway run --config /etc/moteseal/gateway.toml 2>>gateway.err
    """
    from gateway.runner import Gateway  # the MQTT link and prometheus only when running

    cfg = _load(config_path)
    if cfg.log_file:  # the log file gets them too (config_deprecated); say it where run
        for warning in cfg.warnings:
            click.echo(f"warning: {warning}", err=True)
    try:
        stream = open(cfg.log_file, "a", buffering=1) if cfg.log_file else sys.stderr
    except OSError as exc:
        raise click.UsageError(f"log_file {cfg.log_file}: {exc.strerror}") from None
    log = JsonLog(stream, level=cfg.log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gw = Gateway(cfg, log)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        gw.start()
    except OSError as exc:  # the metrics server starts first: nothing else runs yet
        where = (f" (metrics port {cfg.metrics_host}:{cfg.metrics_port}: another gateway or "
                 "program holds it; change [metrics] port)") if exc.errno == errno.EADDRINUSE else ""
        raise click.ClickException(f"cannot start: {exc.strerror or exc}{where}") from None
    # SIGHUP re-reads [routes] and [policy] without a restart (docs/gateway.md).
    signal.signal(signal.SIGHUP, lambda *_: gw.reload_routes(config_path))
    if cfg.log_file:
        click.echo(f"gateway {cfg.name} running; logging to {cfg.log_file} (Ctrl-C stops)", err=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        gw.stop()


def _from_metrics(url: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (operator-given URL)
        text = resp.read().decode()
    out: dict[str, Any] = {"source": url, "relayed_by_link": {}, "dropped": {},
                           "last_seen": {}, "links": {}}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "moteseal_gateway_relayed_total":
                out["relayed_by_link"][labels["link"]] = int(value)
            elif name == "moteseal_gateway_dropped_total":
                out["dropped"][labels["reason"]] = int(value)
            elif name == "moteseal_gateway_device_last_seen_timestamp_seconds":
                out["last_seen"][labels["device"]] = value
            elif name == "moteseal_gateway_queue_depth":
                out["links"].setdefault(labels["link"], {})["queue_depth"] = int(value)
            elif name == "moteseal_gateway_link_up":
                out["links"].setdefault(labels["link"], {})["connected"] = value == 1
            elif name == "moteseal_gateway_uptime_seconds":
                out["uptime_s"] = value
    out["relayed"] = sum(out["relayed_by_link"].values())
    return out


def _human(s: dict[str, Any]) -> str:
    lines = [f"gateway {s.get('name', '?')}  ({s.get('source', '')})"]
    if "uptime_s" in s:
        lines.append(f"  uptime      {s['uptime_s']:.0f} s" + ("  (stopped)" if s.get("stopped") else ""))
    lines.append(f"  relayed     {s['relayed']}  " +
                 " ".join(f"{k}={v}" for k, v in sorted(s["relayed_by_link"].items())))
    drops = {k: v for k, v in s["dropped"].items() if v}
    lines.append(f"  dropped     {sum(drops.values())}  " +
                 " ".join(f"{k}={v}" for k, v in sorted(drops.items())))
    for name, info in sorted(s["links"].items()):
        lines.append(f"  link {name:<8} {'up' if info.get('connected') else 'DOWN'}  "
                     f"queue {info.get('queue_depth', 0)}")
        if "owned_shards" in info:  # shard = "auto"
            lines.append(f"  shards      {len(info['owned_shards'])} of {info['shards']} owned, "
                         f"peers {','.join(info['peers']) or '-'}, "
                         f"takeovers {info['takeovers']}, replayed {info['replayed']}")
    now = time.time()
    for dev, ts in sorted(s["last_seen"].items()):
        lines.append(f"  device {dev:<16} last seen {now - ts:6.1f} s ago")
    return "\n".join(lines)


@gateway_group.command("status")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="gateway.toml: use its status_file, else its metrics port.")
@click.option("--status-file", type=click.Path(path_type=Path), default=None,
              help="The gateway's status file ([gateway] status_file), instead of --config.")
@click.option("--url", default=None, help="Prometheus endpoint, e.g. http://127.0.0.1:9108/metrics")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: Path | None, status_file: Path | None, url: str | None,
           as_json: bool) -> None:
    """Show relayed and dropped counts, links, queue depth and last-seen times.

    Exits 1 if the gateway cannot be reached or its status file is stale
    (not rewritten for three status intervals).

    \b
    Examples:
      moteseal gateway status --config gateway.toml
      moteseal gateway status --status-file /var/lib/moteseal/gw1.status.json --json
      moteseal gateway status --url http://127.0.0.1:9108/metrics
    """
    if config_path is not None and status_file is None and url is None:
        cfg = _load(config_path)
        if cfg.status_file:
            status_file = Path(cfg.status_file)
        elif cfg.metrics_port:
            url = f"http://{cfg.metrics_host}:{cfg.metrics_port}/metrics"
        else:
            raise click.UsageError(f"{config_path}: set [gateway] status_file or [metrics] port")
    if status_file is None and url is None:
        raise click.UsageError("give --config, --status-file or --url")
    stale = False
    if url is not None:
        try:
            s = _from_metrics(url)
        except OSError as exc:
            raise click.ClickException(f"cannot read {url}: {exc}") from None
    else:
        assert status_file is not None
        try:
            s = json.loads(status_file.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read {status_file}: {exc}") from None
        s["source"] = str(status_file)
        age = time.time() - float(s.get("updated", 0))
        stale = not s.get("stopped") and age > 3 * float(s.get("status_interval", 2.0))
        s["stale"] = stale
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
    else:
        click.echo(_human(s))
        if stale:
            click.echo("  STALE: the status file has not been updated; is the gateway running?")
    if stale:
        sys.exit(1)

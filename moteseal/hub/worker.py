"""One worker of a sharded hub (``moteseal hub worker``; docs/scaling.md,
"Sharded hubs"): the peer for the devices whose shards it holds, with its
registry, readings and acknowledgement marks in PostgreSQL shared with the
other workers, and its shards leased there (``moteseal.hub.shard``).

Invariants:
- Rule 1: the worker reads the up topics of exactly the devices of the
  shards it holds (``ShardLink.set_devices``), changed by the lease thread
  before a lease is released and after one is claimed (``shard`` Rule 1).
- Rule 2: on gaining a shard the worker forgets its cached acknowledgement
  marks for those devices (``Inbox.forget``), so its first decision for
  each reads the shared store; the store refuses a reading another worker
  delivered (``pg_store`` Rule 1), so the readings table holds each
  reading exactly once whatever the handovers.
- Rule 3: the device list is re-read when the registry's revision changes
  (a device provisioned or revoked by any process) and at least every
  ``DEVICES_REFRESH`` seconds.
- Rule 4: no secret is logged or reported: reports hold ids, shard numbers
  and counts; the DSN is shown without its password.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from device.errors import LocalError
from moteseal.hub.config import HubConfig
from moteseal.hub.shard import Leases, shard_of

__all__ = ["ShardWorker", "registry_url", "single_hub_registry", "PgHubLock"]

DEVICES_REFRESH = 30.0
Report = dict[str, Any]


def registry_url(cfg: HubConfig) -> tuple[str, str | None]:
    """The registry DSN (``$MOTESEAL_REGISTRY_URL``, else ``[registry]
    url``) and the password from ``[registry] password_file`` (None: the
    DSN's own, or libpq's ``PGPASSWORD``/``~/.pgpass``). Raises
    ``LocalError`` if neither names a PostgreSQL URL."""
    from moteseal.keys.registry_pg import is_pg_url
    from moteseal.hub.sinks import read_secret

    url = os.environ.get("MOTESEAL_REGISTRY_URL") or cfg.get("registry", "url")
    if not is_pg_url(url):
        raise LocalError(f"{cfg.path}: a sharded worker needs [registry] url = \"postgresql://...\" "
                         "(or $MOTESEAL_REGISTRY_URL)")
    return url, read_secret(cfg.path_of("registry", "password_file"))


_HUB_LOCK = 0x68756231  # "hub1": exclusive for `hub run`, shared by the sharded workers


class PgHubLock:
    """A session advisory lock on the registry's database: exclusive for
    one `hub run` (its Rule 1), shared by sharded workers, so a single hub
    and workers never split one registry's devices. Held until ``close``
    (or the process dies: the server drops a dead session's locks).
    Not thread-safe: taken and released by the starting thread."""

    def __init__(self, url: str, password: str | None, shared: bool) -> None:
        import psycopg
        from moteseal.keys.registry_pg import show_dsn
        kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if password is not None:
            kw["password"] = password
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        try:
            self._conn = psycopg.connect(url, **kw)
            got = self._conn.execute(f"SELECT {fn}(%s)", (_HUB_LOCK,)).fetchone()[0]
        except psycopg.Error as e:
            raise LocalError(f"registry {show_dsn(url)}: {str(e).strip().splitlines()[0]}") from None
        if not got:
            self._conn.close()
            raise LocalError(f"registry {show_dsn(url)}: " + (
                "a single hub ('moteseal hub run') serves this registry; stop it before starting workers"
                if shared else "another hub or sharded workers serve this registry: one hub per peer id, "
                "or the devices' traffic would be split (stop them first)"))

    def close(self) -> None:
        self._conn.close()


def single_hub_registry(cfg: HubConfig, passphrase: bytes | None) -> tuple[Any, PgHubLock]:
    """For `hub run` on a PostgreSQL registry: the exclusive lock, then the
    registry. Raises ``LocalError`` (exit 2) if anything else serves it."""
    from moteseal.keys.registry_pg import PgRegistry
    url, pw = registry_url(cfg)
    lock = PgHubLock(url, pw, shared=False)
    try:
        return PgRegistry(url, passphrase=passphrase, password=pw), lock
    except BaseException:
        lock.close()
        raise


class ShardWorker:
    """``start()`` connects everything and returns; ``run(stop)`` handles
    envelopes until ``stop`` is set; ``close()`` releases the leases (the
    others take over at their next renewal) and disconnects.

    Thread-safe where it must be: the lease thread and the listener thread
    share the link (``ShardLink``) and the inbox, both thread-safe;
    ``on_report`` is called from both threads.
    """

    def __init__(self, cfg: HubConfig, name: str, passphrase: bytes | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.name, self.passphrase = cfg, name, passphrase
        self.on_report = on_report
        self.clock = clock
        self.stop_event = threading.Event()
        self.registry: Any = None
        self.store: Any = None
        self.link: Any = None
        self.leases: Leases | None = None
        self.listener: Any = None
        self._devices: list[str] = []
        self._devices_at = -1e9
        self._rev: Any = None
        self._thread: threading.Thread | None = None
        self._report_lock = threading.Lock()
        self._hub_lock: PgHubLock | None = None

    def start(self) -> "ShardWorker":
        from device.peer import PeerSessions
        from device.session import DEFAULT_SUITE
        from moteseal.crypto.backend_nacl import NaclBackend
        from moteseal.hub.pg_store import PgReadingStore
        from moteseal.hub.shard_link import ShardLink
        from moteseal.hub.sinks import read_secret
        from moteseal.keys.registry_pg import PgRegistry
        from moteseal.peer.delivery import Inbox
        from moteseal.peer.listen import PeerListener

        cfg = self.cfg
        url, pw = registry_url(cfg)
        try:
            self._hub_lock = PgHubLock(url, pw, shared=True)
            self.registry = PgRegistry(url, passphrase=self.passphrase, password=pw)
            self.registry.check_statics()
            self.store = PgReadingStore(url, worker=self.name, password=pw)
            self.peer_id = self.registry.peer_id.decode()
            mq = cfg.values["mqtt"]
            brokers = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in mq["brokers"]] or \
                [(mq["host"], mq["port"])]
            self.sessions = PeerSessions(NaclBackend(), self.registry.peer_id, self.registry,
                                         DEFAULT_SUITE, max_age=cfg.get("hub", "max_session_age"))
            self.link = ShardLink(self.peer_id, self.name, brokers, username=mq["username"] or None,
                                  password=read_secret(cfg.path_of("mqtt", "password_file")),
                                  tls=mq["tls"], ca_file=str(cfg.path_of("mqtt", "ca_file") or "") or None,
                                  protocol=4 if mq["protocol"] == "3.1.1" else 5,
                                  via_gateway=cfg.values["shards"]["via"] == "gateway")
            self.inbox = Inbox(self.store)
            self.listener = PeerListener(self.sessions, self.link, self._report, inbox=self.inbox)
            self.link.start()
            sh = cfg.values["shards"]
            self.leases = Leases(url, self.name, count=sh["count"], lease=sh["lease_seconds"],
                                 renew=sh["renew_seconds"], password=pw, on_change=self._apply)
            self.leases.tick()
            self._thread = threading.Thread(target=self._lease_loop, name="hub-leases", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        self._report({"event": "worker_started", "worker": self.name, "registry": self.registry.path,
                      "broker": f"{self.link.host}:{self.link.port}", "shards": self.leases.count})
        return self

    def run(self, stop: threading.Event) -> None:
        """Handle envelopes until ``stop`` is set."""
        self.listener.run(stop)

    def close(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.leases is not None:
            self.leases.release_all()
            self.leases.close()
        for part in (self.link, self.registry, self.store, self._hub_lock):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - closing the rest matters more
                    pass

    # -- leases ----------------------------------------------------------------

    def _lease_loop(self) -> None:
        assert self.leases is not None
        leases = self.leases
        while not self.stop_event.wait(leases.renew):
            leases.tick()
            try:
                rev = self.registry.revision()
            except Exception:  # noqa: BLE001 - the database is down: leases fence us (shard Rule 1)
                continue
            if rev != self._rev or self.clock() - self._devices_at >= DEVICES_REFRESH:
                self._apply(set(leases.held), set(), set())

    def _device_ids(self) -> list[str]:
        rev = self.registry.revision()
        if rev != self._rev or self.clock() - self._devices_at >= DEVICES_REFRESH:
            self._devices = [d.decode("ascii") for d in self.registry.device_ids()]
            self._devices_at, self._rev = self.clock(), rev
        return self._devices

    def _apply(self, held: set[int], gained: set[int], lost: set[int]) -> None:
        """Hold the up topics of exactly the devices of ``held`` (Rule 1)."""
        count = self.leases.count if self.leases is not None else self.cfg.get("shards", "count")
        try:
            devices = self._device_ids()
        except Exception:  # noqa: BLE001 - no device list: drop everything rather than guess
            devices = []
            held = set()
        mine = [d for d in devices if shard_of(d, count) in held]
        if gained:
            self.inbox.forget([d for d in mine if shard_of(d, count) in gained])  # Rule 2
        self.link.set_devices(mine)
        if gained or lost:
            self._report({"event": "shards", "worker": self.name, "held": len(held),
                          "gained": sorted(gained), "lost": sorted(lost), "devices": len(mine),
                          "ts": round(time.time(), 3)})

    def _report(self, r: Report) -> None:
        if self.on_report is not None:
            with self._report_lock:
                try:
                    self.on_report(r)
                except Exception:  # noqa: BLE001 - a broken printer must not stop the worker
                    pass

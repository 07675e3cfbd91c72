"""The peer's device registry on PostgreSQL, for a sharded hub (CPython
only; docs/scaling.md, "Sharded hubs").

``PgRegistry`` is ``moteseal.keys.registry.Registry`` with the SQLite file
replaced by a PostgreSQL database that several hub workers (processes, on
one machine or several) share: the same methods, the same invariants, the
same tables (``_DDL`` below mirrors ``moteseal.keys.records._DDL``). The
registry's SQL runs unchanged through ``_PgDb``, a thin adapter that gives
a psycopg connection the few ``sqlite3`` manners ``Registry`` uses.

Invariants, beyond ``Registry``'s:
- ``counter_set`` is one conditional statement, ``UPDATE ... WHERE counter
  < value``: of two workers that race to accept message 1s with the same
  (or a lower) counter for one device, exactly one wins; the other gets
  ``StorageError`` (``device.peer`` Rule 3: refused as ``unstored``, no
  message 2, the device retries). A counter never goes down.
- Every write transaction (``BEGIN IMMEDIATE`` in ``Registry``) first takes
  a transaction-scoped advisory lock on the registry, so registry writes
  are serialised across processes exactly as SQLite's single writer
  serialises them (provisioning, rotation, revocation, refusal counts).
  The handshake path (``counter_set``, ``note_static_used``,
  ``clear_restored``) is single statements and does not take it.
- ``revision()`` reads a counter that statement triggers bump on every
  change of a device's PSK, generation or revocation, of the device set,
  and of the peer keys (what SQLite's ``data_version`` stands for): a
  revocation made by any process ends the sessions of every worker within
  its re-check interval.
- PSKs are stored as SQLite stores them: in the clear, in a store only the
  peer may read (SQLite: a 0600 file; here: a database the peer's role
  owns; give no other role access). The DSN's password is never logged,
  shown or put in argv: ``show_dsn`` drops it, and it comes from the config
  file, a password file or ``PGPASSWORD``/``~/.pgpass`` (libpq).
- Commits are durable before they return (PostgreSQL's default
  ``synchronous_commit = on``; ``_connect`` sets it explicitly).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from device.errors import StorageError
from moteseal.keys.records import SCHEMA_VERSION, RegistryError, parse_id
from moteseal.keys.registry import Passphrase, Registry

__all__ = ["PgRegistry", "show_dsn", "is_pg_url"]

_LOCK_KEY = 0x6D6F7465  # "mote": the advisory lock every registry write transaction takes

_DDL = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peer_keys (
    pub BYTEA PRIMARY KEY,
    key_path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    created_at DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION,
    rowid BIGSERIAL UNIQUE  -- SQLite's implicit rowid: the tie-break of "newest first"
);
CREATE TABLE IF NOT EXISTS devices (
    device_id BYTEA PRIMARY KEY,
    psk BYTEA NOT NULL,
    suite TEXT NOT NULL,
    generation BIGINT NOT NULL,
    provisioned_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    revoke_reason TEXT,
    counter BIGINT NOT NULL DEFAULT -1,
    last_static BYTEA,
    last_seen DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS device_pins (
    device_id BYTEA NOT NULL,
    pub BYTEA NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (device_id, pub)
);
CREATE TABLE IF NOT EXISTS restored (device_id BYTEA PRIMARY KEY);
CREATE TABLE IF NOT EXISTS padding (
    device_id BYTEA PRIMARY KEY,
    hs TEXT NOT NULL,
    up TEXT NOT NULL,
    down TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    device_id BYTEA NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, reason)
);
CREATE TABLE IF NOT EXISTS registry_revision (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    v BIGINT NOT NULL
);
INSERT INTO registry_revision (v) VALUES (0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION moteseal_bump_revision() RETURNS trigger AS $$
BEGIN
    UPDATE registry_revision SET v = v + 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS devices_revision ON devices;
CREATE TRIGGER devices_revision AFTER INSERT OR DELETE OR UPDATE OF psk, generation, revoked_at
    ON devices FOR EACH STATEMENT EXECUTE FUNCTION moteseal_bump_revision();
DROP TRIGGER IF EXISTS peer_keys_revision ON peer_keys;
CREATE TRIGGER peer_keys_revision AFTER INSERT OR DELETE OR UPDATE
    ON peer_keys FOR EACH STATEMENT EXECUTE FUNCTION moteseal_bump_revision();
"""


def is_pg_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def show_dsn(dsn: str) -> str:
    """The DSN for messages: host, port and database, never the password."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://(unparsable DSN)"
    return f"postgresql://{d.get('host', '')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def _connect(dsn: str, password: str | None) -> psycopg.Connection:
    kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 10, "row_factory": _row_factory}
    if password is not None:
        kw["password"] = password
    conn = psycopg.connect(dsn, **kw)
    conn.execute("SET synchronous_commit = on")
    return conn


class _Row(dict):
    """A row that answers both ``row["name"]`` and ``row[0]`` (sqlite3.Row's manners)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return dict.__getitem__(self, key)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or []]
    return lambda values: _Row(zip(names, values))


class _PgDb:
    """The part of ``sqlite3.Connection`` that ``Registry`` uses, on psycopg:
    ``?`` placeholders, ``BEGIN IMMEDIATE`` (here: BEGIN plus the registry's
    advisory lock), ``in_transaction``. Not thread-safe: ``Registry`` holds
    its lock around every use. A connection lost outside a transaction is
    reopened once on the next statement (a restarted server)."""

    def __init__(self, dsn: str, password: str | None) -> None:
        self._dsn, self._password = dsn, password
        self.conn = _connect(dsn, password)

    @staticmethod
    def _sql(sql: str) -> str:
        sql = sql.replace("?", "%s")
        # PostgreSQL wants the existing row named in an upsert's expression.
        return sql.replace("count = count + excluded.count", "count = refusals.count + excluded.count")

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def _live(self) -> psycopg.Connection:
        if self.conn.closed or self.conn.broken:
            self.conn = _connect(self._dsn, self._password)
        return self.conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        conn = self._live()
        if sql == "BEGIN IMMEDIATE":
            conn.execute("BEGIN")
            return conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        return conn.execute(self._sql(sql), tuple(params) if params else None)

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self._live().cursor()
        cur.executemany(self._sql(sql), list(rows))
        return cur

    def close(self) -> None:
        self.conn.close()


class PgRegistry(Registry):
    """A peer's registry in a PostgreSQL database (``dsn``: a libpq URL or
    conninfo string; ``password`` overrides the DSN's). Thread-safe; one
    connection per instance. Several instances in several processes may
    share one database (that is its purpose).

    Raises ``RegistryError`` if the server cannot be reached, or the
    database holds no registry (and ``create_for_peer`` is None) or another
    schema.
    """

    _DB_ERRORS = (psycopg.Error,)

    def __init__(self, dsn: str, *, create_for_peer: bytes | None = None,
                 passphrase: Passphrase = None, password: str | None = None) -> None:
        # Registry.__init__ opens an SQLite file; everything it sets up
        # besides the connection is repeated here.
        import time as _time
        self.path = show_dsn(dsn)
        self._passphrase = passphrase
        self._lock = threading.RLock()
        self._keys = {}
        self._pending = {}
        self._last_flush = _time.monotonic() - 1.0
        self._last_log = {}
        self._key_error_logged = {}
        self._flush_timer = None
        self._closed = False
        self._store_error_logged = -1e9
        self._local_rev = 0
        try:
            self._db = _PgDb(dsn, password)  # type: ignore[assignment]
        except psycopg.Error as e:
            raise RegistryError(f"registry {self.path}: cannot connect ({_first_line(e)})") from None
        try:
            with self._tx():
                exists = self._db.execute("SELECT to_regclass('meta') IS NOT NULL AS t").fetchone()["t"]
                if not exists:
                    if create_for_peer is None:
                        raise RegistryError(f"{self.path}: no registry in this database; create one with "
                                            "'moteseal hub registry-copy' (docs/scaling.md)")
                    parse_id(create_for_peer, "peer id")
                    self._db.execute(_DDL)
                    self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    self._db.execute("INSERT INTO meta VALUES ('peer_id', ?)", (create_for_peer.decode("ascii"),))
                meta = {r["k"]: r["v"] for r in self._db.execute("SELECT k, v FROM meta").fetchall()}
        except psycopg.Error as e:
            self._db.close()
            raise RegistryError(f"{self.path}: not a moteseal registry ({_first_line(e)})") from None
        except BaseException:
            self._db.close()
            raise
        if meta.get("schema") != str(SCHEMA_VERSION) or "peer_id" not in meta:
            self._db.close()
            raise RegistryError(f"{self.path}: unsupported registry schema {meta.get('schema')!r}")
        self.peer_id = meta["peer_id"].encode("ascii")

    def peer_keys(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "rowid"} for r in super().peer_keys()]

    def revision(self) -> tuple[int, int]:
        """Changes whenever a device or peer key may have changed, in any
        process (one indexed read)."""
        with self._lock:
            return self._local_rev, self._db.execute("SELECT v FROM registry_revision").fetchone()["v"]

    def counter_set(self, device_id: bytes, value: int) -> None:
        """Stores the accepted message-1 counter, only if it is above the
        one stored (one atomic statement). Raises ``StorageError`` if
        another worker stored this or a higher counter first, or the
        database cannot write; then nothing changed."""
        import time as _time
        with self._storing("counter"), self._lock:
            cur = self._db.execute(
                "UPDATE devices SET counter = ?, last_seen = ? WHERE device_id = ? AND counter < ?",
                (int(value), _time.time(), bytes(device_id), int(value)))
            if cur.rowcount == 0 and self.counter_get(device_id) >= int(value):
                raise StorageError(f"registry {self.path}: message-1 counter {value} was already "
                                   "taken (another worker accepted it)")

    def note_static_used(self, device_id: bytes, static_pub: bytes) -> None:
        import time as _time
        with self._storing("last peer key"), self._lock:
            self._db.execute(
                "UPDATE devices SET last_static = ?, last_seen = ? WHERE device_id = ? "
                "AND (last_static IS NULL OR last_static != ?)",
                (bytes(static_pub), _time.time(), bytes(device_id), bytes(static_pub)))

    def clear_restored(self, device_id: bytes) -> None:
        with self._storing("restore mark"), self._lock:
            self._db.execute("DELETE FROM restored WHERE device_id = ?", (bytes(device_id),))

    def device_ids(self) -> list[bytes]:
        """Every provisioned device id (revoked ones too), sorted."""
        with self._lock:
            return [bytes(r["device_id"]) for r in
                    self._db.execute("SELECT device_id FROM devices ORDER BY device_id").fetchall()]

    def copy_from(self, src: Registry) -> int:
        """Copies an (SQLite) registry's peer keys and devices, with their
        PSKs, counters, pins and restore marks, into this empty one, in one
        transaction. Returns the number of devices. Raises ``RegistryError``
        if the peer ids differ or this registry already holds devices or keys."""
        if src.peer_id != self.peer_id:
            raise RegistryError(f"peer ids differ: {src.path} is {src.peer_id!r}, {self.path} is {self.peer_id!r}")
        sdb = src._db
        with src._lock, self._tx():
            if self._db.execute("SELECT 1 FROM devices UNION ALL SELECT 1 FROM peer_keys LIMIT 1").fetchone():
                raise RegistryError(f"{self.path} already holds devices or keys; copy into an empty one")
            for r in sdb.execute("SELECT * FROM peer_keys ORDER BY created_at, rowid"):
                self._db.execute("INSERT INTO peer_keys (pub, key_path, state, created_at, retired_at) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 (r["pub"], r["key_path"], r["state"], r["created_at"], r["retired_at"]))
            n = 0
            for r in sdb.execute("SELECT * FROM devices"):
                self._db.execute(
                    "INSERT INTO devices (device_id, psk, suite, generation, provisioned_at, revoked_at, "
                    "revoke_reason, counter, last_static, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tuple(r[k] for k in ("device_id", "psk", "suite", "generation", "provisioned_at",
                                         "revoked_at", "revoke_reason", "counter", "last_static", "last_seen")))
                n += 1
            pins = [tuple(r) for r in sdb.execute("SELECT device_id, pub, position FROM device_pins")]
            if pins:
                self._db.executemany("INSERT INTO device_pins VALUES (?, ?, ?)", pins)
            for r in sdb.execute("SELECT device_id FROM restored"):
                self._db.execute("INSERT INTO restored VALUES (?)", (r[0],))
            self._local_rev += 1
        return n


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

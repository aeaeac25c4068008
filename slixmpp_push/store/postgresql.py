"""The PostgreSQL store: the same tables in a database that several processes share.

Each table of :data:`~.base.TABLES` is an SQL table ``(key text PRIMARY KEY, doc json)``.
``json``, not ``jsonb``: it keeps the text exactly as written (``jsonb`` refuses
``\\u0000`` and rewrites numbers), so what goes in comes back out unchanged.

Reads never touch the database: everything is loaded at open, in one snapshot, and kept
in memory as by every store; the registrations are read through a cursor, a chunk of
rows at a time, each row becoming its object at once. Writes go through one connection
and one writer task, which commits every change queued meanwhile in one transaction
(group commit), in key order, and answers the writers once it has committed. The schema
is versioned: :data:`MIGRATIONS` are applied in order, in one transaction, under an
advisory lock (two instances starting together do not race), when a writable store opens
(``serve``) or by ``slixmpp-push store upgrade``; a database whose schema is newer than
this release knows is refused.

Other processes' changes: a trigger on every table sends ``NOTIFY`` with the table and
the key; the store LISTENs on its writer connection, reads the changed rows back and
takes them into memory (:meth:`~.base.Store._apply_remote`), skipping its own (same
server PID) and the keys it is itself about to write (its write commits later, so it
wins in the database too). A registration added or removed through one instance is
thus in every other's memory a few milliseconds later.

A lost connection (the database restarted or unreachable) fails the writes waiting on
it with :class:`StoreError`, makes the store not writable (``/health`` not ready) and
is retried, at once and then with a backoff; while it is down, writes fail at once.
Notifications sent meanwhile are lost, so after reconnecting the store reads every
table again and takes in what changed. An idle connection is pinged every
:data:`PING_INTERVAL` seconds, so that a dead database is seen without traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..errors import StoreError
from .base import (
    REGISTRATIONS,
    TABLES,
    Loaded,
    LoadedRegistrations,
    Op,
    Store,
    collections_paused,
)
from .urls import display_url

log = logging.getLogger(__name__)

#: The NOTIFY channel of every change; the payload is ``[schema, table, key]`` (key
#: null: reread the whole table, for a key too long for a notification).
CHANNEL = "slixmpp_push_changes"
#: pg_advisory_xact_lock key held while migrating ("slixpush" in ASCII).
SCHEMA_LOCK = 0x736C_6978_7075_7368
CONNECT_TIMEOUT = 10.0
#: Every statement (and commit) must finish within this: a hung database fails writes.
COMMAND_TIMEOUT = 10.0
#: Reading every table (at open, after a reconnection): 100k registrations take ~0.3 s.
READ_ALL_TIMEOUT = 60.0
PING_INTERVAL = 10.0
#: While the database is down: the first retry at once, then after this, doubling.
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 10.0
#: Rows per statement batch: a bulk copy (store migrate) stays within COMMAND_TIMEOUT.
CHUNK = 5_000
#: Transactions of several instances may deadlock on the same keys: tried again.
CONFLICT_TRIES = 3
#: Rows decoded on the event loop; more are decoded in a thread.
DECODE_INLINE = 1_000
#: Registrations read per round trip when the store opens (the last chunk's texts are
#: freed memory that the process keeps).
READ_CHUNK = 2_000

Row = tuple[str, str, str | None]  # table, key, JSON text or None for a deletion


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the statements that lead to it from the previous one."""

    version: int
    description: str
    statements: tuple[str, ...]


# Written out, not derived from TABLES: a migration never changes once released; a
# later table gets a migration of its own.
_V1_TABLES = ("registrations", "pending", "dead_tokens", "client_registrations", "pages",
              "omemo")
_V1_NOTIFY = f"""
CREATE FUNCTION slixmpp_push_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD.key;
    ELSE
        changed := NEW.key;
    END IF;
    -- A notification carries less than 8000 bytes: for a longer key, reread the table.
    IF octet_length(changed) > 7000 THEN
        changed := NULL;
    END IF;
    PERFORM pg_notify('{CHANNEL}',
                      json_build_array(TG_TABLE_SCHEMA, TG_TABLE_NAME, changed)::text);
    RETURN NULL;
END
$$"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the store's tables, with a NOTIFY on every change", (
        *(f"CREATE TABLE {name} (key text PRIMARY KEY, doc json NOT NULL)"
          for name in _V1_TABLES),
        _V1_NOTIFY,
        *(f"CREATE TRIGGER {name}_changed AFTER INSERT OR UPDATE OR DELETE ON {name} "
          "FOR EACH ROW EXECUTE FUNCTION slixmpp_push_changed()" for name in _V1_TABLES),
    )),
    # For several active instances (store/shared.py): who delivers each pending
    # notification until when, which write of it is current; one rate budget per node.
    Migration(2, "leases on pending notifications, shared per-node rate budgets", (
        "ALTER TABLE pending ADD COLUMN owner text, ADD COLUMN lease_until timestamptz, "
        "ADD COLUMN version bigint NOT NULL DEFAULT 0",
        "CREATE INDEX pending_lease_until ON pending (lease_until)",
        "CREATE INDEX pending_owner ON pending (owner)",
        "CREATE TABLE node_rates (key text PRIMARY KEY, tat double precision NOT NULL)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                  "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
_UPSERT = {name: f"INSERT INTO {name} (key, doc) VALUES ($1, $2) "
                 "ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc" for name in TABLES}
_DELETE = {name: f"DELETE FROM {name} WHERE key = $1" for name in TABLES}
_CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


def _encode(name: str, key: str, doc: dict[str, Any] | None) -> Row:
    if doc is None:
        return (name, key, None)
    try:
        return (name, key, json.dumps(doc, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {name} {key!r}: {exc}") from None


def _decode(name: str, rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """The documents of ``rows``; one that is no JSON object (written by hand) is logged
    and left out, as the TinyDB store leaves it out."""
    docs = {}
    for key, text in rows:
        doc = json.loads(text)
        if isinstance(doc, dict):
            docs[key] = doc
        else:
            _not_an_object(name, key)
    return docs


def _not_an_object(name: str, key: str) -> None:
    log.error("store: %s %r in the database is not a JSON object; ignored", name, key)


def _build(rows: Iterable[Sequence[Any]], registrations: LoadedRegistrations) -> None:
    """Each row's registration into ``registrations`` (:func:`_decode`'s rules)."""
    with collections_paused():
        for key, text in rows:
            doc = json.loads(text)
            if isinstance(doc, dict):
                registrations.put(key, doc)
            else:
                _not_an_object(REGISTRATIONS, key)


class PostgresStore(Store):
    """Every table of the store in one PostgreSQL database (``postgresql://`` URL).

    ``password`` is the role's password (None: none, or libpq's ``PGPASSWORD`` and
    ``~/.pgpass``). A ``read_only`` store loads a snapshot and lets the connection go;
    it neither writes, nor migrates, nor follows other processes' changes.
    """

    #: Told how long each commit took, as ``observe("commit", seconds)`` (a metric).
    observe: Callable[[str, float], None] | None = None

    def __init__(self, url: str, *, password: str | None = None, read_only: bool = False,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 command_timeout: float = COMMAND_TIMEOUT,
                 ping_interval: float = PING_INTERVAL,
                 retry_max_delay: float = RETRY_MAX_DELAY) -> None:
        super().__init__()
        self.url = url
        self.where = display_url(url)
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.ping_interval = ping_interval
        self.retry_max_delay = retry_max_delay
        #: The database's schema version once open (0: no store there yet), and the one
        #: found before this open upgraded it.
        self.schema_version = 0
        self.schema_found = 0
        self._password = password
        self._conn: asyncpg.Connection | None = None
        self._pid = 0  # of our connection's server process: its notifications are ours
        self._schema = ""  # current_schema(): notifications from other schemas are not
        self._queue: list[tuple[list[Row], asyncio.Future[None]]] = []
        self._inflight: Counter[tuple[str, str]] = Counter()  # queued or committing
        self._stale: set[tuple[str, str | None]] = set()  # changed by others: reread
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._rereads: list[asyncio.Future[None]] = []  # waiting for the next refresh
        self._error = ""  # why the connection is down
        self._retry_delay = 0.0
        self._retry_at = 0.0  # loop time of the next connection attempt while down

    # -- opening ------------------------------------------------------------------------
    async def _load(self) -> Loaded:
        conn = await self._connect()
        try:
            tables = await self._read_loaded(conn) if self.schema_version else Loaded()
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(self._describe(exc)) from None
            raise
        if self.read_only:
            await self._hang_up(conn)
        else:
            self._use(conn)
        return tables

    async def _open_once(self) -> None:
        try:
            await super()._open_once()
        except BaseException:  # the tables did not load: let the connection go
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.terminate()
            raise

    async def upgrade(self) -> tuple[int, int]:
        """Bring the schema up to date without loading anything (``slixmpp-push store
        upgrade``): the versions before and after."""
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only")
        await self._hang_up(await self._connect())
        return self.schema_found, self.schema_version

    async def _loaded(self) -> None:
        if not self.read_only:
            self._writer = asyncio.create_task(self._run(), name="push-store-postgresql")

    async def _connect(self) -> asyncpg.Connection:
        """A connection with the schema checked (and upgraded unless read-only), and
        listening for other processes' changes unless read-only; StoreError if not."""
        try:
            conn = await asyncpg.connect(
                self.url, password=self._password, timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={"application_name": "slixmpp-push"})
        except TimeoutError:
            raise StoreError(f"{self.where}: cannot connect: no answer within "
                             f"{self.connect_timeout:g} s") from None
        except Exception as exc:
            raise StoreError(self._describe(exc)) from None
        try:
            self.schema_found = await self._schema_of(conn)
            self.schema_version = self.schema_found
            if not self.read_only and self.schema_found < SCHEMA_VERSION:
                self.schema_version = await self._upgrade(conn)
            self._schema = await conn.fetchval("SELECT current_schema()") or ""
            if not self.read_only:
                await conn.add_listener(CHANNEL, self._on_notification)
                conn.add_termination_listener(self._on_termination)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(self._describe(exc)) from None
            raise
        return conn

    async def _schema_of(self, conn: asyncpg.Connection) -> int:
        """The database's schema version (0: none), refused when newer than ours, or,
        for a read-only store, older."""
        if not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
            return 0
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        self._refuse_newer(version)
        if self.read_only and 0 < version < SCHEMA_VERSION:
            raise StoreError(f"{self.where}: the store's schema is version {version}, this "
                             f"release reads {SCHEMA_VERSION}: run slixmpp-push store upgrade "
                             "(serve upgrades it when it starts)")
        return int(version)

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.where}: the store's schema is version {version}, newer "
                             f"than this release knows ({SCHEMA_VERSION}): run the release "
                             "that upgraded it, or a newer one")

    async def _upgrade(self, conn: asyncpg.Connection) -> int:
        """Apply the migrations the database lacks, in one transaction, one process at a
        time; the schema version reached."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(_VERSION_TABLE)
            # Read again under the lock: another process may have upgraded meanwhile.
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            self._refuse_newer(version)
            for migration in MIGRATIONS:
                if migration.version <= version:
                    continue
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version, description) "
                                   "VALUES ($1, $2)", migration.version, migration.description)
                log.info("store: %s upgraded to schema version %d (%s)", self.where,
                         migration.version, migration.description)
        return SCHEMA_VERSION

    async def _read_loaded(self, conn: asyncpg.Connection) -> Loaded:
        """Every table, from one snapshot, the registrations built as they arrive."""
        loaded = Loaded()
        timeout = max(READ_ALL_TIMEOUT, self.command_timeout)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for name in TABLES:
                query = f"SELECT key, doc FROM {name}"
                if name != REGISTRATIONS:
                    rows = await conn.fetch(query, timeout=timeout)
                    loaded.documents[name] = await self._decoded(name, rows)
                    continue
                # Counted first (same snapshot): the indexes are sized once.
                loaded.registrations.reserve(await conn.fetchval(
                    f"SELECT count(*) FROM {name}", timeout=timeout))
                cursor = await conn.cursor(query, timeout=timeout)
                # The next chunk travels while this one is built: on the event loop, a
                # few milliseconds a chunk (a thread measured slower: the GIL's handoffs).
                arriving = asyncio.ensure_future(cursor.fetch(READ_CHUNK, timeout=timeout))
                try:
                    while rows := await arriving:
                        arriving = asyncio.ensure_future(
                            cursor.fetch(READ_CHUNK, timeout=timeout))
                        _build(rows, loaded.registrations)
                finally:
                    if not arriving.done():
                        arriving.cancel()
                    with contextlib.suppress(BaseException):
                        await arriving  # a failed build: the fetch under way ends first
        return loaded

    async def _read_all(self, conn: asyncpg.Connection) -> dict[str, dict[str, dict[str, Any]]]:
        """Every table, from one snapshot."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            raw = {name: await conn.fetch(f"SELECT key, doc FROM {name}",
                                          timeout=max(READ_ALL_TIMEOUT, self.command_timeout))
                   for name in TABLES}
        return {name: await self._decoded(name, rows) for name, rows in raw.items()}

    @staticmethod
    async def _decoded(name: str, rows: list[Any]) -> dict[str, dict[str, Any]]:
        if len(rows) <= DECODE_INLINE:
            return _decode(name, rows)
        return await asyncio.to_thread(_decode, name, rows)  # 100k documents: ~0.3 s

    # -- writing ------------------------------------------------------------------------
    async def _persist(self, ops: list[Op]) -> None:
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only")
        if self._closed or self._writer is None:
            raise StoreError("the store is closed")
        rows = [_encode(name, key, doc) for name, key, doc in ops]
        loop = asyncio.get_running_loop()
        if self._conn is None and loop.time() < self._retry_at:
            raise StoreError(self._error)  # down, and not retrying yet: at once
        keys = [(name, key) for name, key, _ in rows]
        done: asyncio.Future[None] = loop.create_future()
        self._inflight.update(keys)
        self._queue.append((rows, done))
        self._wakeup.set()
        try:
            await done
        except asyncio.CancelledError:
            # The write may still commit: read these keys back once it is done, so
            # that memory (which the caller rolls back) follows the database.
            self._stale.update(keys)
            self._wakeup.set()
            raise

    async def _run(self) -> None:
        """The writer: commits, reconnects, pings, and takes in others' changes."""
        while True:
            idle = await self._wait()
            try:
                if self._conn is not None and self._conn.is_closed():
                    self._lost(f"{self.where}: the connection was closed")
                if self._conn is None and (self._queue or not self._closed):
                    await self._reconnect()
                if self._conn is not None:
                    if self._queue:
                        await self._commit_queue()
                    elif idle:
                        await self._conn.fetchval("SELECT 1")
                    if self._stale:
                        await self._refresh()
                    self._answer_rereads()
            except Exception as exc:  # the connection broke (or worse): start over
                if not isinstance(exc, StoreError | OSError | TimeoutError
                                  | asyncpg.PostgresError | asyncpg.InterfaceError):
                    log.exception("store: unexpected failure of the PostgreSQL writer")
                self._lost(self._describe(exc))
                self._answer_rereads()  # with what memory holds: the caller goes on
            if self._closed and not self._queue:
                return

    async def _wait(self) -> bool:
        """Until there is work, or a ping or a reconnection is due (then True)."""
        if self._closed:
            return False
        if self._conn is not None:
            timeout = self.ping_interval
        else:
            timeout = max(0.0, self._retry_at - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return True
        finally:
            self._wakeup.clear()
        return False

    async def _commit_queue(self) -> None:
        batch, self._queue = self._queue, []
        rows = [row for written, _ in batch for row in written]
        keys = Counter((name, key) for name, key, _ in rows)
        began = asyncio.get_running_loop().time()
        try:
            await self._commit(rows)
        except Exception as exc:
            error = StoreError(f"cannot write to {self._describe(exc)}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            # The writers roll memory back; what does the database hold? Read it back.
            self._stale.update(keys)
            raise
        else:
            if self.observe is not None:
                self.observe("commit", asyncio.get_running_loop().time() - began)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._inflight -= keys

    async def _commit(self, rows: list[Row]) -> None:
        """One transaction, the last change of each key only, in key order."""
        latest = {(name, key): doc for name, key, doc in rows}
        order = {name: index for index, name in enumerate(TABLES)}
        ordered = sorted(latest.items(), key=lambda item: (order[item[0][0]], item[0][1]))
        conn = self._conn
        assert conn is not None
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                async with conn.transaction():
                    for name in TABLES:
                        upserts = [(key, doc) for (table, key), doc in ordered
                                   if table == name and doc is not None]
                        deletes = [(key,) for (table, key), doc in ordered
                                   if table == name and doc is None]
                        for start in range(0, len(upserts), CHUNK):
                            await conn.executemany(_UPSERT[name], upserts[start:start + CHUNK])
                        for start in range(0, len(deletes), CHUNK):
                            await conn.executemany(_DELETE[name], deletes[start:start + CHUNK])
                return
            except _CONFLICTS:
                if attempt == CONFLICT_TRIES:
                    raise

    def _fail_queue(self, error: str) -> None:
        batch, self._queue = self._queue, []
        for rows, done in batch:
            self._inflight -= Counter((name, key) for name, key, _ in rows)
            if not done.done():
                done.set_exception(StoreError(error))

    # -- the connection -----------------------------------------------------------------
    def _use(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._pid = conn.get_server_pid()

    def _lost(self, error: str) -> None:
        """The connection is unusable: drop it, report, and reconnect (at once the
        first time, then backing off)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
        if self._closed and not self._queue:
            return
        self._down(f"database unreachable: {error}")
        self._wakeup.set()

    def _down(self, error: str) -> None:
        """Not writable until a reconnection works; the next one is tried after the
        current delay, which doubles."""
        self._error = error
        self.status.write_failed(error, writes=0)
        self._retry_at = asyncio.get_running_loop().time() + self._retry_delay
        self._retry_delay = min(self.retry_max_delay,
                                max(RETRY_FIRST_DELAY, self._retry_delay * 2))

    def _on_termination(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn and not self._closed:
            self._lost(f"{self.where}: the connection was closed")

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            self._fail_queue(self._error)
            return
        try:
            conn = await self._connect()
        except StoreError as exc:
            self._down(f"database unreachable: {exc}")
            self._fail_queue(self._error)
            return
        self._use(conn)
        await self._resync()  # notifications were lost while down
        self._retry_delay = 0.0
        if not self.status.writable:
            self.status.write_succeeded()

    async def _hang_up(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.close(timeout=self.command_timeout)
        except Exception:
            conn.terminate()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._wakeup.set()
            await self._writer
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await self._hang_up(conn)

    # -- other processes' changes -------------------------------------------------------
    async def reread(self, name: str, key: str) -> None:
        """Read one document again now, on the writer's connection: another instance may
        have written it a moment ago, before its notification arrived here."""
        if self.read_only or self._closed or self._writer is None or self._conn is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stale.add((name, key))
        self._rereads.append(done)
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), self.command_timeout)

    def _answer_rereads(self) -> None:
        rereads, self._rereads = self._rereads, []
        for done in rereads:
            if not done.done():
                done.set_result(None)

    def _on_notification(self, conn: asyncpg.Connection, pid: int, channel: str,
                         payload: str) -> None:
        if pid == self._pid:
            return  # our own write: already in memory
        try:
            schema, name, key = json.loads(payload)
        except (ValueError, TypeError):
            return
        if schema != self._schema or name not in TABLES:
            return  # another store's (a database shared by several, one per schema)
        self._stale.add((name, key))
        self._wakeup.set()

    async def _refresh(self) -> None:
        """Read back what others changed and take it in."""
        stale, self._stale = self._stale, set()
        conn = self._conn
        assert conn is not None
        whole = {name for name, key in stale if key is None}
        for name in TABLES:
            if name in whole:
                rows = await conn.fetch(f"SELECT key, doc FROM {name}")
                self._take_table(name, await self._decoded(name, rows))
                continue
            keys = sorted(key for table, key in stale if table == name and key is not None)
            if not keys:
                continue
            rows = await conn.fetch(f"SELECT key, doc FROM {name} WHERE key = ANY($1::text[])",
                                    keys)
            docs = await self._decoded(name, rows)
            for key in keys:
                self._take(name, key, docs.get(key))

    async def _resync(self) -> None:
        """After a reconnection: every table read again, and what changed taken in."""
        self._stale.clear()  # the whole read covers them; later ones are kept
        assert self._conn is not None
        tables = await self._read_all(self._conn)
        for name in TABLES:
            self._take_table(name, tables[name])

    def _take_table(self, name: str, docs: dict[str, dict[str, Any]]) -> None:
        for key in [key for key in self.table(name) if key not in docs]:
            self._take(name, key, None)
        for key, doc in docs.items():
            self._take(name, key, doc)

    def _take(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        if (name, key) in self._inflight:
            return  # our own write of it commits later, and wins there too
        if not self._holds(name, key, doc):
            self._apply_remote(name, key, doc)

    # -- messages -----------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> str:
        return describe_failure(self.where, exc, timeout=self.command_timeout,
                                password_given=self._password is not None)


def describe_failure(where: str, exc: BaseException, *, timeout: float,
                     password_given: bool) -> str:
    """One line for a failure to connect to ``where`` or to run a statement there (no
    traceback); ``timeout`` is the one that expired, for a TimeoutError."""
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"{where}: no answer within {timeout:g} s"
    if isinstance(exc, OSError):
        return f"{where}: cannot connect: {exc.strerror or exc}"
    if isinstance(exc, asyncpg.InvalidPasswordError) and not password_given:
        return f"{where}: {exc} (no password was given)"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"{where}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"

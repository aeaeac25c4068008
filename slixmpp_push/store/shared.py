"""What several active app servers sharing one PostgreSQL database decide together.

With ``[appserver] instances = "all-active"`` every ``serve`` on the database connects
and serves (ejabberd, Openfire and Tigase balance a component's traffic over several
connections). The store's tables are already shared (:mod:`.postgresql`); three things
need an agreement that a copy in memory cannot give, and :class:`SharedState` makes it
with SQL statements on a small connection pool of its own:

- **Pending notifications are leased.** A row of ``pending`` has an ``owner`` (an
  instance's :attr:`SharedState.owner`), a ``lease_until`` (the database's clock) and a
  ``version`` that every write of its document increments. Only the owner delivers it.
  The owner renews its leases every third of :data:`LEASE`; a row whose lease ran
  out (its owner crashed or stopped) is taken over by whichever instance sweeps first
  (``FOR UPDATE SKIP LOCKED``: instances sweeping together never block each other, nor
  take the same row). A notification written for a node while another instance holds a
  live lease on it replaces the document and leaves the lease: the owner delivers the
  newer one (coalescing across instances). Settling is conditional on the version, so a
  newer notification is never deleted with the older one it replaced.
- **The per-node rate limit is one budget.** A GCRA ("generic cell rate algorithm":
  the token bucket written as one timestamp per node, the theoretical arrival time) in
  table ``node_rates``, on the database's clock. Requests of one loop turn go in one
  statement (:class:`_RateBatch`), so a storm costs a round trip per batch, not per
  publish.
- **Read-modify-write of a document** (:meth:`SharedState.modify`): the pager's
  escalation and an ack arriving at another instance must not overwrite each other.

Every failure is a :class:`~slixmpp_push.errors.StoreError` naming the database; the
callers answer ``wait`` and keep what they had, as for any store failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StoreError
from .base import PENDING, TABLES
from .urls import display_url

if TYPE_CHECKING:  # asyncpg is an optional dependency (the postgresql extra)
    import asyncpg

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal: a killed instance's notifications wait this long
#: (at most, plus a sweep) before another instance takes them over. An instance renews
#: its leases and sweeps for expired ones every third of it.
LEASE = 6.0
#: Rows taken over per sweep statement.
SWEEP_BATCH = 500
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0
POOL_SIZE = 4
RATE_POOL_SIZE = 2

T = TypeVar("T")
Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]
Observe = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class Leased:
    """A pending row this instance holds the lease of."""

    key: str
    doc: dict[str, Any]
    version: int
    previous_owner: str | None = None  # set when taken over from another instance


def instance_name() -> str:
    """Who this process is, in ``owner`` columns and log lines: unique per start (a PID is
    reused after a reboot), readable by an operator."""
    return f"pid {os.getpid()} on {socket.gethostname()}/{os.urandom(3).hex()}"


# A notification received before the one stored (by another instance, a moment
# earlier) does not replace it: the newer one is delivered, the older is coalesced.
_RECEIVED = "coalesce((({doc})->'notification'->>'received_at')::float8, 0)"
# A row's versions grow, and are never reused by a later row of the same key (a settle of
# version v must not delete a notification written after the row was deleted and written
# anew): the database clock in microseconds, or one more than the last.
_NEXT_VERSION = "greatest(p.version + 1, (extract(epoch FROM clock_timestamp()) * 1e6)::bigint)"
_FIRST_VERSION = "(extract(epoch FROM clock_timestamp()) * 1e6)::bigint"
_KEEP = f"""
INSERT INTO {PENDING} AS p (key, doc, owner, lease_until, version)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), {_FIRST_VERSION})
ON CONFLICT (key) DO UPDATE SET
    doc = EXCLUDED.doc, version = {_NEXT_VERSION},
    owner = CASE WHEN p.lease_until > now() THEN p.owner ELSE EXCLUDED.owner END,
    lease_until = CASE WHEN p.lease_until > now() THEN p.lease_until
                       ELSE EXCLUDED.lease_until END
WHERE {_RECEIVED.format(doc="EXCLUDED.doc")} >= {_RECEIVED.format(doc="p.doc")}
RETURNING version, owner = $3 AS mine
"""
# The row as it stands when _KEEP wrote nothing (a newer notification is kept there).
_KEPT = f"SELECT version, owner = $2 AS mine, doc FROM {PENDING} WHERE key = $1"
_CLAIM = f"""
UPDATE {PENDING} SET owner = $2, lease_until = now() + make_interval(secs => $3)
WHERE key = $1 AND (owner = $2 OR lease_until IS NULL OR lease_until <= now())
RETURNING doc, version
"""
_RESCHEDULE = f"""
UPDATE {PENDING} p SET doc = $3, version = {_NEXT_VERSION}
WHERE key = $1 AND version = $2 AND owner = $4
RETURNING version
"""
# Deleted if still the version delivered; else the newer row, when it is ours to deliver.
_SETTLE = f"""
WITH gone AS (DELETE FROM {PENDING} WHERE key = $1 AND version = $2 RETURNING key)
SELECT doc, version FROM {PENDING}
WHERE key = $1 AND owner = $3 AND NOT EXISTS (SELECT 1 FROM gone)
"""
_DROP = f"DELETE FROM {PENDING} WHERE key = $1"
_RENEW = f"""
UPDATE {PENDING} SET lease_until = now() + make_interval(secs => $2) WHERE owner = $1
RETURNING key
"""
_SWEEP = f"""
WITH expired AS (
    SELECT key, owner FROM {PENDING}
    WHERE lease_until IS NULL OR lease_until <= now()
    ORDER BY lease_until NULLS FIRST
    LIMIT $3
    FOR UPDATE SKIP LOCKED)
UPDATE {PENDING} p SET owner = $1, lease_until = now() + make_interval(secs => $2)
FROM expired WHERE p.key = expired.key
RETURNING p.key, p.doc, p.version, expired.owner
"""
_RELEASE = f"UPDATE {PENDING} SET lease_until = NULL WHERE owner = $1"
_LEASED = f"SELECT doc, version FROM {PENDING} WHERE key = $1 AND owner = $2"
# GCRA: a node may send when its theoretical arrival time is at most `tolerance` ahead
# of now; each send moves it `interval` on. The rows returned are the nodes let through.
# Rows are locked in key order: two instances' batches sharing nodes cannot deadlock.
_RATE_TAKE = """
WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) AS now)
INSERT INTO node_rates AS r (key, tat)
SELECT key, clock.now + $2 FROM unnest($1::text[]) AS key, clock
ORDER BY key
ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, EXCLUDED.tat - $2) + $2
WHERE greatest(r.tat, EXCLUDED.tat - $2) - (EXCLUDED.tat - $2) <= $3
RETURNING key
"""
_RATE_WAIT = """
SELECT key, tat - $2 - extract(epoch FROM clock_timestamp()) AS wait
FROM node_rates WHERE key = ANY($1::text[])
"""
# A row whose arrival time has passed is a full bucket: the same as no row.
_RATE_PRUNE = "DELETE FROM node_rates WHERE tat < extract(epoch FROM now())"


class SharedState:
    """Leases, rate budgets and read-modify-writes shared by the active instances.

    ``owner`` names this instance in the ``pending`` table; ``observe(operation,
    seconds)`` is told how long each database round trip took (a metric).
    """

    def __init__(self, url: str, *, password: str | None = None, owner: str | None = None,
                 lease: float = LEASE, observe: Observe | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.url = url
        self.where = display_url(url)
        self.owner = owner or instance_name()
        self.lease = lease
        self.observe = observe
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._password = password
        self._pool: asyncpg.Pool | None = None
        self._rate_pool: asyncpg.Pool | None = None
        self._rates: dict[tuple[int, float], _RateBatch] = {}

    async def open(self) -> None:
        """Connect (the store has created or upgraded the schema already)."""
        import asyncpg

        name = f"slixmpp-push {self.owner}"[:63]
        try:
            self._pool = await asyncpg.create_pool(
                self.url, password=self._password, min_size=1, max_size=POOL_SIZE,
                timeout=self.connect_timeout, command_timeout=self.command_timeout,
                server_settings={"application_name": name})
            # Rate budgets need no wait for the disk: one lost in a database crash only
            # lets a node send a little early. Their commits return before the flush.
            self._rate_pool = await asyncpg.create_pool(
                self.url, password=self._password, min_size=1, max_size=RATE_POOL_SIZE,
                timeout=self.connect_timeout, command_timeout=self.command_timeout,
                server_settings={"application_name": name, "synchronous_commit": "off"})
        except Exception as exc:
            for pool in (self._pool, self._rate_pool):
                if pool is not None:
                    pool.terminate()
            self._pool = self._rate_pool = None
            raise StoreError(self._describe(exc)) from None

    async def close(self, *, release: bool = True) -> None:
        """Let the leases go (``release``: the others take this instance's pending
        notifications at their next sweep, not after the lease) and disconnect."""
        pool, self._pool = self._pool, None
        rate_pool, self._rate_pool = self._rate_pool, None
        if rate_pool is not None:
            rate_pool.terminate()  # nothing there is worth waiting for
        if pool is None:
            return
        if release:
            try:
                await self._run(pool, "release", lambda conn: conn.execute(_RELEASE, self.owner))
            except StoreError as exc:
                log.warning("could not release this instance's leases (they expire in "
                            "%g s): %s", self.lease, exc)
        try:
            await asyncio.wait_for(pool.close(), self.command_timeout)
        except (TimeoutError, Exception):
            pool.terminate()

    # -- pending notifications ----------------------------------------------------------
    async def keep(self, key: str, doc: dict[str, Any],
                   ) -> tuple[int, bool, dict[str, Any] | None]:
        """Write ``doc`` as the node's pending notification, unless the one stored was
        received after it (then that one stands for both): the version stored, whether this
        instance holds the lease (False: another one does, and delivers it), and the stored
        document when it is not ``doc``."""
        text = _dumps(doc)

        async def run(conn: asyncpg.Connection) -> Any:
            row = await conn.fetchrow(_KEEP, key, text, self.owner, self.lease)
            return row if row is not None else await conn.fetchrow(_KEPT, key, self.owner)

        row = await self._use("keep", run)
        if row is None:  # deleted between the two statements: delivered meanwhile
            return await self.keep(key, doc)
        stored = _loads(row["doc"]) if len(row) > 2 else None  # _KEPT: ours not written
        return int(row["version"]), bool(row["mine"]), stored

    async def claim(self, key: str) -> Leased | None:
        """The node's pending notification, now leased to this instance; None when another
        instance holds a live lease on it, or it is gone."""
        row = await self._fetchrow("claim", _CLAIM, key, self.owner, self.lease)
        return None if row is None else Leased(key, _loads(row["doc"]), int(row["version"]))

    async def reschedule(self, key: str, version: int, doc: dict[str, Any]) -> int | None:
        """Replace version ``version`` (a retry's new attempt count and due time): the new
        version, or None when a newer notification replaced it meanwhile."""
        value = await self._fetchval("settle", _RESCHEDULE, key, version, _dumps(doc),
                                     self.owner)
        return None if value is None else int(value)

    async def settle(self, key: str, version: int) -> Leased | None:
        """Delete version ``version`` (delivered, refused, given up); a newer notification
        written meanwhile stays, and is returned when it is this instance's to deliver."""
        row = await self._fetchrow("settle", _SETTLE, key, version, self.owner)
        return None if row is None else Leased(key, _loads(row["doc"]), int(row["version"]))

    async def drop(self, key: str) -> None:
        """Delete the node's pending notification whoever holds it (unregistered)."""
        await self._execute("settle", _DROP, key)

    async def renew(self) -> set[str]:
        """Extend every lease of this instance: the keys it holds."""
        rows = await self._fetch("renew", _RENEW, self.owner, self.lease)
        return {row["key"] for row in rows}

    async def leased(self, key: str) -> Leased | None:
        """This instance's row for ``key``, if it holds it."""
        row = await self._fetchrow("claim", _LEASED, key, self.owner)
        return None if row is None else Leased(key, _loads(row["doc"]), int(row["version"]))

    async def sweep(self, limit: int = SWEEP_BATCH) -> list[Leased]:
        """Take over pending notifications whose lease ran out (or that nobody leased: a
        one-active instance wrote them)."""
        rows = await self._fetch("sweep", _SWEEP, self.owner, self.lease, limit)
        taken = []
        for row in rows:
            try:
                taken.append(Leased(row["key"], _loads(row["doc"]), int(row["version"]),
                                    row["owner"]))
            except ValueError as exc:
                log.error("pending notification %r in %s is unreadable: %s", row["key"][:12],
                          self.where, exc)
        return taken

    # -- the per-node rate limit --------------------------------------------------------
    async def take_rate(self, key: str, burst: int, interval: float) -> float:
        """Take a send from ``key``'s budget (``burst`` sends, one more each ``interval``
        seconds): 0.0 if one was free, else the seconds until one is."""
        if interval <= 0:
            return 0.0
        batch = self._rates.get((burst, interval))
        if batch is None:
            batch = self._rates[(burst, interval)] = _RateBatch(self, burst, interval)
        return await batch.take(key)

    async def prune_rates(self) -> None:
        """Forget budgets that are full again (the table stays as small as the busy nodes)."""
        await self._execute("sweep", _RATE_PRUNE)

    # -- documents ----------------------------------------------------------------------
    async def modify(self, table: str, key: str, change: Change) -> dict[str, Any] | None:
        """Apply ``change`` to the stored document ``key`` of ``table`` in one transaction,
        the row locked meanwhile: what is stored afterwards. ``change`` gets the document
        (None: none) and returns the new one (None: delete it); returning the very object
        it got writes nothing."""
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")

        async def run(conn: asyncpg.Connection) -> dict[str, Any] | None:
            async with conn.transaction():
                text = await conn.fetchval(f"SELECT doc FROM {table} WHERE key = $1 "
                                           "FOR UPDATE", key)
                current = _loads(text) if text is not None else None
                new = change(current)
                if new is current:
                    return current
                if new is None:
                    await conn.execute(f"DELETE FROM {table} WHERE key = $1", key)
                else:
                    await conn.execute(f"INSERT INTO {table} (key, doc) VALUES ($1, $2) "
                                       "ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc",
                                       key, _dumps(new))
                return new

        return await self._use("modify", run)

    # -- plumbing -----------------------------------------------------------------------
    async def _fetchrow(self, operation: str, query: str, *args: Any) -> Any:
        return await self._use(operation, lambda conn: conn.fetchrow(query, *args))

    async def _fetchval(self, operation: str, query: str, *args: Any) -> Any:
        return await self._use(operation, lambda conn: conn.fetchval(query, *args))

    async def _fetch(self, operation: str, query: str, *args: Any) -> list[Any]:
        return list(await self._use(operation, lambda conn: conn.fetch(query, *args)))

    async def _execute(self, operation: str, query: str, *args: Any) -> None:
        await self._use(operation, lambda conn: conn.execute(query, *args))

    async def _use(self, operation: str,
                   work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._rate_pool if operation == "rate" else self._pool
        if pool is None:
            raise StoreError(f"{self.where}: the shared state is closed")
        return await self._run(pool, operation, work)

    async def _run(self, pool: asyncpg.Pool, operation: str,
                   work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        began = time.perf_counter()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                result = await work(conn)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(self._describe(exc)) from None
        if self.observe is not None:
            self.observe(operation, time.perf_counter() - began)
        return result

    def _describe(self, exc: BaseException) -> str:
        from .postgresql import describe_failure

        return describe_failure(self.where, exc, timeout=self.command_timeout,
                                password_given=self._password is not None)


class _RateBatch:
    """Rate-limit requests of one (burst, interval), sent together: one statement runs at
    a time, and the requests queued meanwhile go in the next. A node asked twice in one
    batch waits for the next (one statement cannot update a row twice)."""

    def __init__(self, shared: SharedState, burst: int, interval: float) -> None:
        self.shared = shared
        self.interval = interval
        self.tolerance = (burst - 1) * interval
        self._waiting: list[tuple[str, asyncio.Future[float]]] = []
        self._running: asyncio.Task[None] | None = None

    async def take(self, key: str) -> float:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch: dict[str, list[asyncio.Future[float]]] = {}
                later = []
                for key, future in self._waiting:
                    if key in batch:
                        later.append((key, future))
                    else:
                        batch[key] = [future]
                self._waiting = later
                try:
                    waits = await self._take(list(batch))
                except StoreError as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(waits.get(key, 0.0))
        finally:
            self._running = None

    async def _take(self, keys: list[str]) -> dict[str, float]:
        shared = self.shared

        async def run(conn: asyncpg.Connection) -> dict[str, float]:
            passed = {row["key"] for row in
                      await conn.fetch(_RATE_TAKE, keys, self.interval, self.tolerance)}
            refused = [key for key in keys if key not in passed]
            if not refused:
                return {}
            rows = await conn.fetch(_RATE_WAIT, refused, self.tolerance)
            # A tiny positive wait when the row vanished meanwhile (pruned): try again soon.
            return {row["key"]: max(float(row["wait"]), 0.001) for row in rows} | {
                key: 0.001 for key in refused if key not in {row["key"] for row in rows}}

        return await shared._use("rate", run)


def _dumps(doc: dict[str, Any]) -> str:
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store a document: {exc}") from None


def _loads(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc

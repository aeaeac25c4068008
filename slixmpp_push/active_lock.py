"""One active ``serve`` per app server and database; any others wait as standbys.

Several ``serve`` processes (on several hosts) may share a PostgreSQL store, but only one
may connect to XMPP and deliver: each would otherwise resume the same pending
notifications and pages, and Prosody takes one connection per component anyway. The
active one holds a PostgreSQL session-level advisory lock on a connection of its own
(:class:`ActiveLock`), keyed by the app server's JID (:func:`lock_key`) so that several
app servers can share one database.

- **Waiting.** A standby blocks in ``pg_advisory_lock``, so that it gets the lock within
  milliseconds of its release. The wait is cut into :data:`WAIT_SLICE` pieces by
  ``lock_timeout``: each piece is also a round trip that shows the connection is alive
  (a client-side timeout catches a silent network). It logs once who holds the lock: the
  holder's ``application_name`` names its PID and host. A database that cannot be
  reached (down, restarting) is waited for in the same way, retried with a backoff.
- **Releasing.** The lock goes with the session: a clean stop closes the connection last,
  after the store; a crash (SIGKILL) closes the socket and PostgreSQL ends the session at
  once; a host that vanished is declared dead by the server's TCP keepalives, set on the
  session (:data:`SERVER_KEEPALIVES`, about 11 s).
- **Losing it.** The active one pings its lock connection every :data:`PING_INTERVAL`
  seconds. When it is lost (the database restarted, a network cut,
  ``pg_terminate_backend``), :attr:`ActiveLock.lost` is set and ``serve`` stops and
  exits: the lock may already be another's. Ping interval plus timeout (4 s) is shorter
  than the server's keepalive verdict, so a cut-off active one stops before a standby
  can take over. ``serve`` also confirms the lock before every XMPP (re)connection, so
  that an active one that was frozen (a paused VM) does not take the component back
  from its successor when it wakes.
- **Stopping a standby** (SIGTERM) cancels the wait and drops the connection at once.
  Its server process, still waiting for the lock, sees the client gone within
  ``client_connection_check_interval`` (1 s; PostgreSQL 14 and later) or else at the end
  of the wait's slice, and ends: a lock granted to it meanwhile goes with it.

The same class takes a lock for another purpose, keyed apart (:func:`lock_key`):
``purpose="pager"`` is the lock of the instance that runs the page escalations when
several serve at once (all-active, :mod:`slixmpp_push.pager_leader`). Its waiting, taking
and losing show in the ``pager_leader`` gauge and in ``pager:`` log lines, never in the
serving metrics, health or ``standby:`` lines (:class:`_Serving`, :class:`_Pager`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from typing import Protocol

import asyncpg

from .errors import StoreError
from .metrics import Metrics
from .store.postgresql import describe_failure
from .store.urls import display_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
#: The active one's round trip on its lock connection, and how long it may take.
PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0
#: A standby's wait for the lock ends (and starts again) after this many seconds.
WAIT_SLICE = 5.0
#: A standby that lost its connection tries again after this, doubling up to the maximum.
RETRY_FIRST_DELAY = 1.0
RETRY_MAX_DELAY = 10.0
#: The server declares the lock connection's client dead after idle + interval × count
#: seconds without an answer (TCP only; a Unix socket needs none).
SERVER_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
                     "tcp_keepalives_count": "3"}
#: A server process waiting for the lock checks this often (ms) whether its client left.
CLIENT_CHECK_INTERVAL_MS = 1000
#: What no retry changes: the database refused the login or does not exist.
REFUSALS = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError,
            asyncpg.InsufficientPrivilegeError)
#: What a standby waits out: the database restarting or unreachable.
TROUBLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

_HOLDER = """
SELECT a.application_name, host(a.client_addr) AS address, a.pid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
"""


#: The lock's purposes: serving (one active ``serve``), running page escalations.
SERVING = "active"
PAGER = "pager"


def lock_key(name: str, purpose: str = SERVING) -> int:
    """The advisory lock key of the app server ``name`` (its JID) for ``purpose``: a signed
    64-bit number."""
    digest = hashlib.blake2b(f"slixmpp-push {purpose} {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def session_name() -> str:
    """This process's ``application_name`` on its lock connection: who is active, for the
    standbys' log line and for ``pg_stat_activity`` (PostgreSQL keeps 63 bytes)."""
    return f"slixmpp-push pid {os.getpid()} on {socket.gethostname()}"[:63]


class _Role(Protocol):
    """What holding the lock means to metrics and log lines, for one purpose."""

    def held_by(self, who: str) -> str:
        """The waiting line's words for who holds it."""
        ...

    def waiting(self, why: str, level: int, new: bool) -> None:
        """Not holding it, because of ``why`` (logged at ``level`` when ``new``)."""
        ...

    def holding(self, where: str, waited: float | None) -> None:
        """Holding it now; ``waited``: seconds spent waiting (None: it was free)."""
        ...

    def lost(self, problem: str, reason: str) -> None:
        """It was lost (``problem``: the whole sentence; ``reason``: why)."""
        ...

    def released(self) -> None:
        """Let go on purpose."""
        ...


class _Serving:
    """The serving lock: the active ``serve`` and its standbys (``active``,
    ``takeovers_total``, /health's role, ``standby:`` lines)."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics

    def held_by(self, who: str) -> str:
        return f"{self.name} is served by {who}"

    def waiting(self, why: str, level: int, new: bool) -> None:
        self.metrics.set_standby(why)
        if new:
            log.log(level, "standby: %s", why)

    def holding(self, where: str, waited: float | None) -> None:
        self.metrics.set_active()
        if waited is not None:  # it was a standby: for another instance, or the database
            self.metrics.takeovers.inc()
            log.info("taking over %s: this instance is the active one now (a standby for "
                     "%.1f s)", self.name, waited)
        else:
            log.info("active for %s (holding its lock in %s)", self.name, where)

    def lost(self, problem: str, reason: str) -> None:
        log.error("%s; stopping: a standby may be active already", problem)
        self.metrics.set_standby(f"lost the active lock: {reason}")

    def released(self) -> None:
        pass


class _Pager:
    """The pager lock (all-active): the instance that runs the page escalations
    (``pager_leader``, ``pager:`` lines); the others serve all the same."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics

    def held_by(self, who: str) -> str:
        return f"the page escalations of {self.name} are run by {who}"

    def waiting(self, why: str, level: int, new: bool) -> None:
        self.metrics.pager_leader.set(0)
        if new:
            log.log(level, "pager: %s", why)

    def holding(self, where: str, waited: float | None) -> None:
        self.metrics.pager_leader.set(1)
        log.info("pager: this instance runs the page escalations of %s%s", self.name,
                 f" now (it waited {waited:.1f} s)" if waited is not None
                 else f" (holding its lock in {where})")

    def lost(self, problem: str, reason: str) -> None:
        self.metrics.pager_leader.set(0)
        log.warning("%s; escalating no more until this instance holds it again", problem)

    def released(self) -> None:
        self.metrics.pager_leader.set(0)


_ROLES: dict[str, type[_Serving] | type[_Pager]] = {SERVING: _Serving, PAGER: _Pager}


class ActiveLock:
    """The advisory lock that makes this process the active app server ``name`` (with
    ``purpose="pager"``: the one running its page escalations).

    ``await acquire()`` returns once it is held (cancel it to give up); meanwhile
    ``metrics`` shows a standby. Then :attr:`lost` is set if the lock connection is
    lost, with :attr:`problem` saying why; :meth:`confirm` raises :class:`StoreError`
    unless the lock is still held; :meth:`release` lets it go. A lock is taken once: to
    take it again after losing it, make a new one.
    """

    def __init__(self, url: str, name: str, metrics: Metrics, *, password: str | None = None,
                 purpose: str = SERVING, connect_timeout: float = CONNECT_TIMEOUT,
                 ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
                 wait_slice: float = WAIT_SLICE) -> None:
        if purpose not in _ROLES:
            raise ValueError(f"no lock purpose {purpose!r} (one of {', '.join(_ROLES)})")
        self.url = url
        self.where = display_url(url)
        self.name = name
        self.purpose = purpose
        self.key = lock_key(name, purpose)
        self.metrics = metrics
        self.role: _Role = _ROLES[purpose](name, metrics)
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.wait_slice = wait_slice
        self.lost = asyncio.Event()
        self.problem = ""
        self._password = password
        self._conn: asyncpg.Connection | None = None
        self._statement = asyncio.Lock()  # one statement at a time on the connection
        self._pinger: asyncio.Task[None] | None = None
        self._releasing = False
        self._said = ""  # the last standby line logged

    # -- becoming active -------------------------------------------------------------------
    async def acquire(self) -> None:
        """Wait until this process holds the lock.

        A database that refuses the login, or does not exist, raises
        :class:`StoreError`: waiting would not change it. One that cannot be reached
        (down, restarting, a network cut) is waited for as a standby, and logged: a
        service started with its database down, or restarted after losing its lock,
        must not use up its restarts.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        delay = RETRY_FIRST_DELAY
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await self._wait_for_lock(conn)
                break
            except REFUSALS as exc:
                raise StoreError(self._describe(exc)) from None
            except TROUBLE as exc:
                self._standby(f"database unreachable: {self._describe(exc)}; retrying",
                              logging.WARNING)
            except Exception as exc:  # a URL asyncpg cannot use
                raise StoreError(self._describe(exc)) from None
            finally:
                if self._conn is None and conn is not None:  # not (or no longer) ours
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)
        conn = self._conn
        assert conn is not None
        conn.add_termination_listener(self._on_termination)
        self._pinger = asyncio.create_task(self._ping_loop(conn),
                                           name=f"push-{self.purpose}-lock")
        self.role.holding(self.where, loop.time() - began if self._said else None)

    async def _wait_for_lock(self, conn: asyncpg.Connection) -> None:
        """Until ``conn`` holds the lock; then it is :attr:`_conn`."""
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
            while True:
                self._standby(f"{await self._holder(conn)}; taking over when it stops",
                              logging.INFO)
                try:
                    # lock_timeout ends the wait after a slice; the client's timeout
                    # catches a connection that went silent.
                    await conn.execute("SELECT pg_advisory_lock($1)", self.key,
                                       timeout=self.wait_slice + self.ping_timeout)
                    break
                except asyncpg.LockNotAvailableError:
                    continue
        self._conn = conn

    async def _holder(self, conn: asyncpg.Connection) -> str:
        """What the standby's line says about the active one."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        row = await conn.fetchrow(_HOLDER, unsigned >> 32, unsigned & 0xFFFF_FFFF)
        if row is None:
            return self.role.held_by("another instance")
        who = row["application_name"] or f"database server process {row['pid']}"
        where = f" (from {row['address']})" if row["address"] else ""
        return self.role.held_by(f"{who}{where}")

    def _standby(self, why: str, level: int) -> None:
        new = why != self._said  # one line per change, not one per wait
        self._said = why
        self.role.waiting(why, level, new)

    async def _connect(self) -> asyncpg.Connection:
        settings = {"application_name": session_name(),
                    "lock_timeout": str(round(self.wait_slice * 1000)), **SERVER_KEEPALIVES}
        try:
            conn = await asyncpg.connect(self.url, password=self._password,
                                         timeout=self.connect_timeout,
                                         server_settings=settings)
        except TimeoutError:
            raise OSError(f"no answer within {self.connect_timeout:g} s") from None
        try:
            # PostgreSQL 14 and later: a waiting server process notices a client that left.
            await conn.execute(f"SET client_connection_check_interval = "
                               f"{CLIENT_CHECK_INTERVAL_MS}")
        except asyncpg.PostgresError:
            pass  # an older server: it notices at the end of the wait's slice
        except BaseException:
            conn.terminate()
            raise
        return conn

    # -- while active ----------------------------------------------------------------------
    async def _ping_loop(self, conn: asyncpg.Connection) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self.ping_interval)
            await self._ping(conn)

    async def _ping(self, conn: asyncpg.Connection) -> None:
        async with self._statement:
            if self.lost.is_set() or self._releasing:
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self.ping_timeout)
            except Exception as exc:
                self._lose(self._describe(exc, self.ping_timeout))

    async def confirm(self) -> None:
        """Raise :class:`StoreError` unless this process still holds the lock (a round trip
        on its connection shows the session, and so the lock, is still there)."""
        if self._conn is not None:
            await self._ping(self._conn)
        if self._conn is None or self.lost.is_set():
            raise StoreError(self.problem or f"{self.where}: the {self.purpose} lock of "
                             f"{self.name} is not held")

    def _on_termination(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lose(f"{self.where}: the connection was closed")

    def _lose(self, reason: str) -> None:
        if self.lost.is_set() or self._releasing:
            return
        self.problem = (f"lost the connection holding the {self.purpose} lock of {self.name}: "
                        f"{reason}")
        self.role.lost(self.problem, reason)
        self.lost.set()

    async def release(self) -> None:
        """Let the lock go (close its connection): a standby takes over."""
        self._releasing = True
        if self._conn is not None:
            self.role.released()
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=self.ping_timeout)
            except Exception:
                conn.terminate()

    def _describe(self, exc: BaseException, timeout: float | None = None) -> str:
        return describe_failure(self.where, exc,
                                timeout=timeout or self.wait_slice + self.ping_timeout,
                                password_given=self._password is not None)

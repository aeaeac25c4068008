"""The store interface: registrations, pending notifications, dead tokens.

Reads are synchronous and answered from in-memory indexes (a publish never
scans); writes are coroutines that return once the change is durable. A back
end only implements :meth:`Store._persist` (and loading); everything else —
indexes, typed accessors, rollback on a failed write, the write health that
/health reports (:class:`~.status.StoreStatus`) — lives here once. A back end
that other processes write too (PostgreSQL) applies their changes to memory
with :meth:`Store._apply_remote`, which updates the indexes and persists nothing, then
tells whoever :meth:`Store.watch`-es that table.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import StoreError
from ..models import Registration
from .status import StoreStatus

log = logging.getLogger(__name__)

REGISTRATIONS = "registrations"
PENDING = "pending"
DEAD_TOKENS = "dead_tokens"
CLIENT_REGISTRATIONS = "client_registrations"  # push_registrar: this device's registrations
PAGES = "pages"  # push_notifier: open pages and their escalation state
OMEMO = "omemo"  # push_notifier's OMEMO keys and sessions (notifier/omemo.py)
TABLES = (REGISTRATIONS, PENDING, DEAD_TOKENS, CLIENT_REGISTRATIONS, PAGES, OMEMO)

#: One change: (table, key, document or None for a deletion).
Op = tuple[str, str, dict[str, Any] | None]

DeviceIdentity = tuple[str, str, str, str]

#: Told of another process's change of one document: (key, document or None if deleted).
Watcher = Callable[[str, dict[str, Any] | None], None]


def device_identity(registration: Registration) -> DeviceIdentity:
    """What makes a re-registration "the same device" (it then keeps its node)."""
    device = registration.device_id or registration.token
    return (registration.account, registration.app, device, registration.channel or "")


class Store(abc.ABC):
    """Durable tables of JSON documents, with typed access for registrations."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in TABLES}
        self._registrations: dict[str, Registration] = {}
        self._by_identity: dict[DeviceIdentity, str] = {}
        self._by_account: dict[str, set[str]] = {}
        self._app_counts: dict[str, int] = {}
        self._opened = False
        self._opening: asyncio.Future[None] | None = None
        self.status = StoreStatus()  # write failures (logged once), journal size
        self._watchers: dict[str, list[Watcher]] = {}

    # -- life cycle ---------------------------------------------------------
    async def open(self) -> None:
        """Load the tables; must be awaited before use. Opening again is a no-op, and
        opens at the same time share one load (several plugins may share one store)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_once())
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            if self._opening is not None and self._opening.done():
                self._opening = None  # a failed open may be tried again
            raise

    async def _open_once(self) -> None:
        if self._opened:
            return
        self._load_tables(await self._load())
        self._opened = True
        await self._loaded()

    async def close(self) -> None:
        """Flush and release the back end."""

    async def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {}

    async def _loaded(self) -> None:
        """Called once the tables are in memory (a back end starts its writer here)."""

    @abc.abstractmethod
    async def _persist(self, ops: list[Op]) -> None:
        """Make ``ops`` durable; raise :class:`StoreError` when that fails."""

    def _load_tables(self, tables: dict[str, dict[str, dict[str, Any]]]) -> None:
        for name in TABLES:
            self._tables[name] = dict(tables.get(name, {}))
        self._registrations.clear()
        self._by_identity.clear()
        self._by_account.clear()
        self._app_counts.clear()
        for node, doc in self._tables[REGISTRATIONS].items():
            try:
                self._index(Registration.from_doc(doc))
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"registration {node!r} in the store is invalid: {exc}") from exc

    # -- registrations ------------------------------------------------------
    def get(self, node: str) -> Registration | None:
        return self._registrations.get(node)

    def find_device(self, identity: DeviceIdentity) -> Registration | None:
        node = self._by_identity.get(identity)
        return self._registrations.get(node) if node is not None else None

    def by_account(self, account: str) -> list[Registration]:
        return [self._registrations[n] for n in sorted(self._by_account.get(account, ()))]

    def registrations(self) -> Iterator[Registration]:
        return iter(list(self._registrations.values()))

    def count_by_app(self) -> dict[str, int]:
        """Registrations per app (for metrics)."""
        return dict(self._app_counts)

    def __len__(self) -> int:
        return len(self._registrations)

    def __bool__(self) -> bool:
        # An empty store is still a store: `store or default` must not replace it.
        return True

    async def put(self, registration: Registration) -> None:
        old = self._registrations.get(registration.node)
        if old is not None:
            self._unindex(old)
        self._index(registration)
        try:
            await self._write(REGISTRATIONS, registration.node, registration.to_doc())
        except BaseException:
            if self._registrations.get(registration.node) is registration:
                self._unindex(registration)
                if old is not None:
                    self._index(old)
            raise

    async def remove(self, node: str) -> Registration | None:
        old = self._registrations.get(node)
        if old is None:
            return None
        self._unindex(old)
        try:
            await self._write(REGISTRATIONS, node, None)
        except BaseException:
            if node not in self._registrations:
                self._index(old)
            raise
        return old

    def _index(self, registration: Registration) -> None:
        self._registrations[registration.node] = registration
        self._by_identity[device_identity(registration)] = registration.node
        self._by_account.setdefault(registration.account, set()).add(registration.node)
        self._app_counts[registration.app] = self._app_counts.get(registration.app, 0) + 1

    def _unindex(self, registration: Registration) -> None:
        if self._registrations.pop(registration.node, None) is not None:
            left = self._app_counts.get(registration.app, 1) - 1
            if left:
                self._app_counts[registration.app] = left
            else:
                self._app_counts.pop(registration.app, None)
        identity = device_identity(registration)
        if self._by_identity.get(identity) == registration.node:
            del self._by_identity[identity]
        nodes = self._by_account.get(registration.account)
        if nodes is not None:
            nodes.discard(registration.node)
            if not nodes:
                del self._by_account[registration.account]

    # -- generic tables (pending notifications, dead tokens) ---------------------
    async def reread(self, name: str, key: str) -> None:
        """Read one document again from where other processes write (a shared database);
        a store only this process writes has nothing to read."""

    def table(self, name: str) -> dict[str, dict[str, Any]]:
        """A read-only view of a table's documents by key."""
        return self._tables[name]

    async def set_doc(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        """Write (or with ``None`` delete) one document of a generic table."""
        await self._write(name, key, doc)

    async def _write(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        table = self._tables[name]
        old = table.get(key)
        if doc is None:
            if old is None:
                return
            del table[key]
        else:
            table[key] = doc
        try:
            await self._persist_reported([(name, key, doc)])
        except BaseException:
            if table.get(key) is doc:
                if old is None:
                    table.pop(key, None)
                else:
                    table[key] = old
            raise

    async def _persist_reported(self, ops: list[Op]) -> None:
        """:meth:`_persist`, with the outcome reported to :attr:`status`."""
        try:
            await self._persist(ops)
        except StoreError as exc:
            self.status.write_failed(str(exc))
            raise
        if not self.status.writable:
            self.status.write_succeeded()

    async def replace_all(self, tables: Mapping[str, Mapping[str, dict[str, Any]]]) -> None:
        """Make the store hold exactly ``tables`` (a table not given: empty), in one write:
        what ``slixmpp-push store migrate`` copies. Memory is restored if it fails."""
        new = {name: dict(tables.get(name, {})) for name in TABLES}
        for node, doc in new[REGISTRATIONS].items():
            try:
                Registration.from_doc(doc)
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"registration {node!r} is invalid: {exc}") from exc
        ops: list[Op] = []
        for name in TABLES:
            old = self._tables[name]
            ops += [(name, key, None) for key in old if key not in new[name]]
            ops += [(name, key, doc) for key, doc in new[name].items() if old.get(key) != doc]
        if not ops:
            return
        before = {name: dict(table) for name, table in self._tables.items()}
        self._load_tables(new)
        try:
            await self._persist_reported(ops)
        except BaseException:
            self._load_tables(before)
            raise

    # -- changes made by other processes --------------------------------------------------
    def _apply_remote(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        """Another process changed a document: take it into memory and the indexes,
        persisting nothing. An unreadable registration is logged and left out."""
        table = self._tables[name]
        if name == REGISTRATIONS:
            try:
                new = Registration.from_doc(doc) if doc is not None else None
            except (KeyError, TypeError, ValueError) as exc:
                log.error("store: registration %s written by another process is unreadable "
                          "(%s); ignored", key, exc)
                return
            old = self._registrations.get(key)
            if old is not None:
                self._unindex(old)
            if new is not None:
                self._index(new)
        if doc is None:
            table.pop(key, None)
        else:
            table[key] = doc
        for watcher in list(self._watchers.get(name, ())):
            try:
                watcher(key, doc)
            except Exception:  # one watcher's bug must not stop the store following others
                log.exception("store: a watcher of %s failed on %s", name, key)

    def watch(self, name: str, watcher: Watcher) -> None:
        """Call ``watcher(key, doc)`` (``doc`` None: deleted) whenever another process's
        change of table ``name`` has been taken into memory; never for this store's own
        writes. Only a store that other processes write too (PostgreSQL) calls it."""
        if name not in self._tables:
            raise KeyError(f"no table {name!r} to watch")
        self._watchers.setdefault(name, []).append(watcher)

    def unwatch(self, name: str, watcher: Watcher) -> None:
        """Stop calling ``watcher`` (not watching: nothing happens)."""
        watchers = self._watchers.get(name, [])
        if watcher in watchers:
            watchers.remove(watcher)


class MemoryStore(Store):
    """Keeps everything in memory: for tests and throwaway demos, never production."""

    async def _persist(self, ops: list[Op]) -> None:
        return None

"""The store interface: registrations, pending notifications, dead tokens.

Reads are synchronous and answered from in-memory indexes (a publish never
scans); writes are coroutines that return once the change is durable. A back
end only implements :meth:`Store._persist` (and loading); everything else —
indexes, typed accessors, rollback on a failed write, the write health that
/health reports (:class:`~.status.StoreStatus`) — lives here once.

Registrations (hundreds of thousands of them) are kept packed, off the Python heap
(:class:`~.packed.RegistrationTable`: one byte array and two hash indexes, by node and
by account); a :class:`~slixmpp_push.models.Registration` is made when one is read, and
the ``registrations`` table's documents too (:class:`RegistrationDocs`). A back end
packs each document as it reads it (:class:`LoadedRegistrations`), without a table of
documents or objects in between. A back end that other processes write too (PostgreSQL)
applies their changes to memory with :meth:`Store._apply_remote`, which updates the
indexes and persists nothing, then tells whoever :meth:`Store.watch`-es that table.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import logging
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from ..models import Registration
from .packed import RegistrationTable
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

_node_of = operator.attrgetter("node")


def device_identity(registration: Registration) -> DeviceIdentity:
    """What makes a re-registration "the same device" (it then keeps its node)."""
    device = registration.device_id or registration.token
    return (registration.account, registration.app, device, registration.channel or "")


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No automatic garbage collection meanwhile (a store building its 100k objects):
    each full collection would walk every object built so far, and everything else the
    process holds, several times over; a fifth of the time a load takes. What is built
    holds no reference cycles. (Process-wide: a second load at the same time, in
    another thread, leaves collections as the first one found them.)"""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class LoadedRegistrations:
    """The registrations table as a back end reads it, in its order: each document is
    packed into :attr:`table` at once (:meth:`RegistrationTable.put_stored`), or, when
    it is not a document as this release writes it, kept in :attr:`unbuilt`, which the
    store checks when it opens (:meth:`Registration.from_doc`, and its error)."""

    __slots__ = ("table", "unbuilt")

    def __init__(self) -> None:
        self.table = RegistrationTable()
        #: Key -> a document of another shape (or a Registration filed under another
        #: key than its node), in the order read.
        self.unbuilt: dict[str, Any] = {}

    def put(self, key: str, doc: Any) -> None:
        if type(doc) is dict and self.table.put_stored(key, doc):
            if self.unbuilt:
                self.unbuilt.pop(key, None)
        else:
            self.keep(key, doc)

    def keep(self, key: str, doc: Any) -> None:
        """Keep ``doc`` as it is, to be checked when the store opens."""
        self.table.discard(key)
        self.unbuilt.pop(key, None)  # the latest goes last
        self.unbuilt[key] = doc

    def delete(self, key: str) -> None:
        self.table.discard(key)
        if self.unbuilt:
            self.unbuilt.pop(key, None)

    def reserve(self, expected: int) -> None:
        """About ``expected`` registrations are coming: size the indexes once."""
        self.table.reserve(expected)

    def clear(self) -> None:
        self.table = RegistrationTable()
        self.unbuilt = {}


@dataclass
class Loaded:
    """What a back end read when the store opens."""

    #: Every table but the registrations: key -> document.
    documents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    registrations: LoadedRegistrations = field(default_factory=LoadedRegistrations)


class RegistrationDocs(Mapping[str, dict[str, Any]]):
    """The ``registrations`` table as documents, each made when it is read
    (:meth:`Registration.to_doc`): the store keeps only the objects."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self._store._registrations[key].to_doc()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._store._registrations))

    def __len__(self) -> int:
        return len(self._store._registrations)

    def __contains__(self, key: object) -> bool:
        return key in self._store._registrations

    def __repr__(self) -> str:
        return f"<{len(self)} registration documents>"


class Store(abc.ABC):
    """Durable tables of JSON documents, with typed access for registrations."""

    def __init__(self) -> None:
        #: Every table but the registrations: key -> document.
        self._tables: dict[str, dict[str, dict[str, Any]]] = {
            name: {} for name in TABLES if name != REGISTRATIONS}
        self._registrations = RegistrationTable()
        #: node -> the marker of the latest change of it in memory whose write is still
        #: in flight: a write that fails rolls memory back only if no change came since.
        self._changes: dict[str, object] = {}
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
        self._adopt(await self._load())
        self._opened = True
        await self._loaded()

    async def close(self) -> None:
        """Flush and release the back end."""

    async def _load(self) -> Loaded:
        return Loaded()

    async def _loaded(self) -> None:
        """Called once the tables are in memory (a back end starts its writer here)."""

    @abc.abstractmethod
    async def _persist(self, ops: list[Op]) -> None:
        """Make ``ops`` durable; raise :class:`StoreError` when that fails."""

    def _adopt(self, loaded: Loaded, invalid: str = "registration {!r} in the store is "
               "invalid: {}") -> None:
        """Take what was loaded as the store's content (the objects themselves, no copy).
        StoreError (``invalid``, with the key and the problem) for the first
        registration that is not one."""
        for name in self._tables:
            self._tables[name] = loaded.documents.get(name, {})
        with collections_paused():
            self._adopt_registrations(loaded.registrations, invalid)

    def _adopt_registrations(self, loaded: LoadedRegistrations, invalid: str) -> None:
        table = loaded.table
        for key, entry in loaded.unbuilt.items():  # documents of another shape, as ever
            try:
                if not isinstance(entry, Registration):
                    entry = Registration.from_doc(entry)
                table.put(entry)  # under its own node (two keys, one node: the later)
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(invalid.format(key, exc)) from exc
        self._registrations = table
        self._changes.clear()

    # -- registrations ------------------------------------------------------
    def get(self, node: str) -> Registration | None:
        return self._registrations.get(node)

    def find_device(self, identity: DeviceIdentity) -> Registration | None:
        """The account's registration of that device: the latest stored, should there be
        several (an account has a few: a scan of them costs less than an index)."""
        for registration in reversed(self._registrations.by_account(identity[0])):
            if device_identity(registration) == identity:
                return registration
        return None

    def by_account(self, account: str) -> list[Registration]:
        return sorted(self._registrations.by_account(account), key=_node_of)

    def registrations(self) -> Iterator[Registration]:
        return iter(list(self._registrations.values()))

    def count_by_app(self) -> dict[str, int]:
        """Registrations per app (for metrics)."""
        return self._registrations.count_by_app()

    def __len__(self) -> int:
        return len(self._registrations)

    def __bool__(self) -> bool:
        # An empty store is still a store: `store or default` must not replace it.
        return True

    async def put(self, registration: Registration) -> None:
        node = registration.node
        old = self._registrations.get(node)
        self._index(registration)  # raises, changing nothing, for what cannot be stored
        change = self._changes[node] = object()
        try:
            await self._persist_reported([(REGISTRATIONS, node, registration.to_doc())])
        except BaseException:
            if self._changes.get(node) is change:  # nothing changed it since
                self._unindex(registration)
                if old is not None:
                    self._index(old)
            raise
        finally:
            if self._changes.get(node) is change:
                del self._changes[node]

    async def remove(self, node: str) -> Registration | None:
        old = self._registrations.get(node)
        if old is None:
            return None
        self._unindex(old)
        change = self._changes[node] = object()
        try:
            await self._persist_reported([(REGISTRATIONS, node, None)])
        except BaseException:
            if self._changes.get(node) is change:
                self._index(old)
            raise
        finally:
            if self._changes.get(node) is change:
                del self._changes[node]
        return old

    def _index(self, registration: Registration) -> None:
        """Hold ``registration``, in place of any with its node."""
        self._registrations.put(registration)

    def _unindex(self, registration: Registration) -> None:
        self._registrations.discard(registration.node)

    # -- generic tables (pending notifications, dead tokens) ---------------------
    async def reread(self, name: str, key: str) -> None:
        """Read one document again from where other processes write (a shared database);
        a store only this process writes has nothing to read."""

    def table(self, name: str) -> Mapping[str, dict[str, Any]]:
        """A read-only view of a table's documents by key (the registrations' are made
        as they are read: :meth:`get` is what a publish uses)."""
        if name == REGISTRATIONS:
            return RegistrationDocs(self)
        return self._tables[name]

    async def set_doc(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        """Write (or with ``None`` delete) one document of a generic table."""
        if name == REGISTRATIONS:
            raise ValueError("registrations are written with put() and remove()")
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
        replacement = Loaded({name: new[name] for name in self._tables})
        for node, doc in new[REGISTRATIONS].items():
            try:
                registration = Registration.from_doc(doc)
                if registration.node == node:
                    replacement.registrations.table.put(registration)
                else:  # indexed by its own node
                    replacement.registrations.unbuilt[node] = registration
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"registration {node!r} is invalid: {exc}") from exc
        ops: list[Op] = []
        for name in TABLES:
            old = self.table(name)
            ops += [(name, key, None) for key in old if key not in new[name]]
            ops += [(name, key, doc) for key, doc in new[name].items() if old.get(key) != doc]
        if not ops:
            return
        before = Loaded({name: dict(table) for name, table in self._tables.items()})
        before.registrations.table = self._registrations  # adopting leaves it as it is
        self._adopt(replacement)
        try:
            await self._persist_reported(ops)
        except BaseException:
            self._adopt(before)
            raise

    # -- changes made by other processes --------------------------------------------------
    def _apply_remote(self, name: str, key: str, doc: dict[str, Any] | None) -> None:
        """Another process changed a document: take it into memory and the indexes,
        persisting nothing. An unreadable registration is logged and left out."""
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
                try:
                    self._index(new)
                except (TypeError, ValueError) as exc:
                    log.error("store: registration %s written by another process cannot "
                              "be held (%s); ignored", key, exc)
            self._changes.pop(key, None)  # theirs is the latest: no rollback over it
        else:
            table = self._tables[name]
            if doc is None:
                table.pop(key, None)
            else:
                table[key] = doc
        for watcher in list(self._watchers.get(name, ())):
            try:
                watcher(key, doc)
            except Exception:  # one watcher's bug must not stop the store following others
                log.exception("store: a watcher of %s failed on %s", name, key)

    def _holds(self, name: str, key: str, doc: dict[str, Any] | None) -> bool:
        """Whether memory holds ``doc`` (None: nothing) under ``key`` of table ``name``."""
        if name == REGISTRATIONS:
            held = self._registrations.get(key)
            return doc is None if held is None else held.to_doc() == doc
        return self._tables[name].get(key) == doc

    def watch(self, name: str, watcher: Watcher) -> None:
        """Call ``watcher(key, doc)`` (``doc`` None: deleted) whenever another process's
        change of table ``name`` has been taken into memory; never for this store's own
        writes. Only a store that other processes write too (PostgreSQL) calls it."""
        if name not in TABLES:
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
